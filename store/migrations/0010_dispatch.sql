-- Dispatch: where an alert is, and who answers for it. SQL functions, so the ingest engine
-- (sync), the API (async) and the escalation timer all route the same way. The set-returning
-- ones are PL/pgSQL so that each session plans their queries once (a LANGUAGE sql function
-- that cannot be inlined is planned on every call: ~30 ms here, per raised alert).
--
-- Levels, most specific first: component → room → building → grid → community → street →
-- district. Only responsible parties count (party_assignments.role = 'responsible').

-- The same ordering of area levels as the block-data API's containment (most specific first).
CREATE FUNCTION cimtwin_area_level_rank(level text) RETURNS int
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT array_position(ARRAY['grid', 'community', 'street', 'district'], level)
$$;

-- The most specific area holding a point (grid before community before street before
-- district; then the smallest; then the lowest id), or null.
CREATE FUNCTION cimtwin_point_area(p_geom geometry) RETURNS bigint
    LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT a.id FROM areas a
     WHERE p_geom IS NOT NULL AND ST_Intersects(a.geom, p_geom)
     ORDER BY cimtwin_area_level_rank(a.level), ST_Area(a.geom), a.id
     LIMIT 1
$$;

-- Where something is, from whatever is known of it: a point, a building, a room, a component.
-- Always exactly one row (all null when nothing is known).
--   geom:         a Point (EPSG:4326): p_geom, else a point on the component's, room's or building's
--                 geometry (ST_PointOnSurface).
--   component_id: p_component_id (if it exists).
--   room_id:      p_room_id, else the component's room.
--   floor_id:     the room's floor, else the component's floor.
--   building_id:  p_building_id, else the component's, else the room's, else the smallest building
--                 whose footprint holds the point.
--   area_id:      the component's area, else the building's area (these links are kept up to date by
--                 the block-data store, derived or explicit), else the most specific area holding
--                 the point.
CREATE FUNCTION cimtwin_place(p_geom geometry, p_building_id bigint, p_room_id bigint, p_component_id bigint)
    RETURNS TABLE (geom geometry, area_id bigint, building_id bigint, floor_id bigint, room_id bigint,
                   component_id bigint)
    LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH c AS (
        SELECT c.id, c.area_id, c.building_id, c.floor_id, c.room_id, c.geom
          FROM components c WHERE c.id = p_component_id),
    r AS (
        SELECT r.id, r.floor_id, f.building_id, r.geom
          FROM rooms r JOIN floors f ON f.id = r.floor_id
         WHERE r.id = coalesce(p_room_id, (SELECT c.room_id FROM c))),
    b0 AS (
        SELECT coalesce(p_building_id, (SELECT c.building_id FROM c), (SELECT r.building_id FROM r)) AS id),
    b AS (
        SELECT b.id, b.area_id, b.geom FROM buildings b WHERE b.id = (SELECT id FROM b0)),
    pt AS (
        SELECT ST_SetSRID(CASE WHEN GeometryType(g) = 'POINT' THEN g ELSE ST_PointOnSurface(g) END, 4326) AS geom
          FROM (SELECT coalesce(p_geom, (SELECT c.geom FROM c), (SELECT r.geom FROM r), (SELECT b.geom FROM b)) AS g) x),
    bld AS (
        SELECT coalesce((SELECT b.id FROM b),
                        (SELECT b2.id FROM buildings b2, pt
                          WHERE pt.geom IS NOT NULL AND ST_Intersects(b2.geom, pt.geom)
                          ORDER BY ST_Area(b2.geom), b2.id LIMIT 1)) AS id)
    SELECT pt.geom,
           coalesce((SELECT c.area_id FROM c),
                    (SELECT b3.area_id FROM buildings b3 WHERE b3.id = bld.id),
                    cimtwin_point_area(pt.geom)),
           bld.id,
           coalesce((SELECT r.floor_id FROM r), (SELECT c.floor_id FROM c)),
           (SELECT r.id FROM r),
           (SELECT c.id FROM c)
      FROM pt, bld;
END $$;

-- Where a sensor is: its place in sensor_places (component, room, building or its device's point)
-- and the links that go with it. Exactly one row; all null for a sensor without a place (or none).
CREATE FUNCTION cimtwin_sensor_place(p_sensor_id bigint)
    RETURNS TABLE (geom geometry, area_id bigint, building_id bigint, floor_id bigint, room_id bigint,
                   component_id bigint)
    LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT p.*
      FROM (SELECT 1) one
      LEFT JOIN LATERAL (SELECT sp.geom, sp.building_id, sp.room_id, sp.component_id
                           FROM sensor_places sp WHERE sp.sensor_id = p_sensor_id LIMIT 1) sp ON true
      CROSS JOIN LATERAL cimtwin_place(sp.geom, sp.building_id, sp.room_id, sp.component_id) p;
END $$;

-- Who answers for an alert at (p_geom, p_area_id, p_building_id, p_room_id, p_component_id): every
-- level from the most specific to the top that has a responsible party, ranked 0, 1, 2, …
--   component: an assignment to that component;
--   room, building: an assignment to that room or building (the building defaults to the
--                   component's, then the room's);
--   areas: p_area_id (default: the component's area, the building's area, else the most specific
--          area holding p_geom or the component), then its parents up to the district. At each
--          area, an assignment of the component's kind within that area (component_kind) is
--          preferred to a plain area assignment; both count at that area's level.
-- Several parties at one level: the kind-specific one, then the lowest assignment id (one per level).
-- The same party at two levels appears at both (escalation then stays with it for one step).
CREATE FUNCTION cimtwin_dispatch_chain(p_geom geometry, p_area_id bigint, p_building_id bigint,
                                       p_room_id bigint, p_component_id bigint)
    RETURNS TABLE (rank int, level text, party_id bigint)
    LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH RECURSIVE
    comp AS (SELECT c.id, c.kind, c.room_id, c.building_id, c.area_id, c.geom FROM components c
              WHERE c.id = p_component_id),
    rm AS (SELECT r.id, f.building_id FROM rooms r JOIN floors f ON f.id = r.floor_id
            WHERE r.id = coalesce(p_room_id, (SELECT comp.room_id FROM comp))),
    bld AS (SELECT b.id, b.area_id FROM buildings b
             WHERE b.id = coalesce(p_building_id, (SELECT comp.building_id FROM comp), (SELECT rm.building_id FROM rm))),
    start AS (SELECT coalesce(p_area_id, (SELECT comp.area_id FROM comp), (SELECT bld.area_id FROM bld),
                              cimtwin_point_area(coalesce(p_geom, (SELECT comp.geom FROM comp)))) AS id),
    up (id, parent_id, level, depth) AS (
        SELECT a.id, a.parent_id, a.level, 0 FROM areas a JOIN start s ON a.id = s.id
        UNION ALL
        SELECT a.id, a.parent_id, a.level, up.depth + 1 FROM up JOIN areas a ON a.id = up.parent_id
         WHERE up.depth < 10),
    levels (ord, level, party_id) AS (
        SELECT 0, 'component', (SELECT pa.party_id FROM party_assignments pa
                                 WHERE pa.component_id = p_component_id AND pa.role = 'responsible'
                                 ORDER BY pa.id LIMIT 1)
        UNION ALL
        SELECT 1, 'room', (SELECT pa.party_id FROM party_assignments pa, rm
                            WHERE pa.room_id = rm.id AND pa.role = 'responsible' ORDER BY pa.id LIMIT 1)
        UNION ALL
        SELECT 2, 'building', (SELECT pa.party_id FROM party_assignments pa, bld
                                WHERE pa.building_id = bld.id AND pa.role = 'responsible' ORDER BY pa.id LIMIT 1)
        UNION ALL
        SELECT 3 + up.depth, up.level,
               (SELECT pa.party_id FROM party_assignments pa
                 WHERE pa.area_id = up.id AND pa.role = 'responsible'
                   AND (pa.component_kind IS NULL OR pa.component_kind = (SELECT comp.kind FROM comp))
                 ORDER BY pa.component_kind IS NULL, pa.id LIMIT 1)
          FROM up)
    SELECT (row_number() OVER (ORDER BY ord) - 1)::int, level, party_id
      FROM levels WHERE party_id IS NOT NULL
     ORDER BY ord;
END $$;

-- Escalation walks an unacknowledged alert up its chain; at the top it notes once that no higher
-- level exists and stops (until the alert is reopened).
ALTER TABLE alerts ADD COLUMN escalation_ended_at timestamptz;
CREATE INDEX alerts_escalation_due ON alerts (ack_due_at) WHERE status = 'open' AND escalation_ended_at IS NULL;
