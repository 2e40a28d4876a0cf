-- Block data, second step: remember which links were derived spatially (so they are
-- derived again when areas or buildings change), geography indexes for distances in
-- metres and nearest-N, and one view that gives every sensor its place.

-- A link given explicitly is kept; a derived one (given as null) is recomputed.
ALTER TABLE areas ADD COLUMN parent_derived boolean NOT NULL DEFAULT false;
ALTER TABLE buildings ADD COLUMN area_derived boolean NOT NULL DEFAULT false;
ALTER TABLE components
    ADD COLUMN area_derived boolean NOT NULL DEFAULT false,
    ADD COLUMN building_derived boolean NOT NULL DEFAULT false;

-- ST_DWithin(geom::geography, …) and ORDER BY geom::geography <-> … use these.
CREATE INDEX buildings_geog ON buildings USING gist ((geom::geography));
CREATE INDEX components_geog ON components USING gist ((geom::geography));
CREATE INDEX rooms_geog ON rooms USING gist ((geom::geography));
CREATE INDEX devices_geog ON devices USING gist ((geom::geography));

CREATE INDEX components_area ON components (area_id);
CREATE INDEX components_floor ON components (floor_id);
CREATE INDEX components_room ON components (room_id);
CREATE INDEX party_assignments_party ON party_assignments (party_id);
CREATE INDEX party_assignments_area ON party_assignments (area_id) WHERE area_id IS NOT NULL;
CREATE INDEX party_assignments_building ON party_assignments (building_id) WHERE building_id IS NOT NULL;
CREATE INDEX party_assignments_room ON party_assignments (room_id) WHERE room_id IS NOT NULL;
CREATE INDEX party_assignments_component ON party_assignments (component_id) WHERE component_id IS NOT NULL;

-- Where each sensor is: its component's geometry, else its room's, else its building's
-- (given, or the room's), else its device's point. Sensors with none of these are absent.
-- The arms are a UNION ALL, so a spatial filter on `geom` reaches each table's GiST index.
CREATE VIEW sensor_places AS
SELECT s.id AS sensor_id, s.device_id, 'component'::text AS place,
       c.id AS component_id, c.room_id, c.floor_id, coalesce(c.building_id, s.building_id) AS building_id,
       c.geom
  FROM sensors s JOIN components c ON c.id = s.component_id
UNION ALL
SELECT s.id, s.device_id, 'room', NULL, r.id, f.id, f.building_id, r.geom
  FROM sensors s JOIN rooms r ON r.id = s.room_id JOIN floors f ON f.id = r.floor_id
 WHERE s.component_id IS NULL AND r.geom IS NOT NULL
UNION ALL
SELECT s.id, s.device_id, 'building', NULL, r.id, f.id, b.id, b.geom
  FROM sensors s
  LEFT JOIN rooms r ON r.id = s.room_id
  LEFT JOIN floors f ON f.id = r.floor_id
  JOIN buildings b ON b.id = coalesce(s.building_id, f.building_id)
 WHERE s.component_id IS NULL AND r.geom IS NULL
UNION ALL
SELECT s.id, s.device_id, 'device', NULL, NULL, NULL, NULL, d.geom
  FROM sensors s JOIN devices d ON d.id = s.device_id
 WHERE s.component_id IS NULL AND s.room_id IS NULL AND s.building_id IS NULL AND d.geom IS NOT NULL;
