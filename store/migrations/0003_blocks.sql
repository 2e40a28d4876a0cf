-- The block-data model (空间块数据): areas, buildings, floors, rooms, components,
-- responsible parties and their assignments. Geometries are EPSG:4326 (lon/lat);
-- CGCS2000 differs by centimetres, so one storage CRS serves both.

CREATE TABLE areas (
    id          bigserial PRIMARY KEY,
    code        text NOT NULL UNIQUE,                 -- adcode (e.g. 440303) or grid code
    name        text NOT NULL,
    level       text NOT NULL CHECK (level IN ('district', 'street', 'community', 'grid')),
    parent_id   bigint REFERENCES areas (id) ON DELETE RESTRICT,
    geom        geometry(MultiPolygon, 4326) NOT NULL CHECK (ST_IsValid(geom)),
    properties  jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (parent_id IS DISTINCT FROM id)
);
CREATE INDEX areas_geom ON areas USING gist (geom);
CREATE INDEX areas_parent ON areas (parent_id);

CREATE TABLE buildings (
    id              bigserial PRIMARY KEY,
    ext_id          text UNIQUE,                      -- the source's id (e.g. OSM way/123); re-import upserts on it
    name            text,
    address         text,
    use             text,
    height          double precision CHECK (height >= 0),
    min_height      double precision NOT NULL DEFAULT 0 CHECK (min_height >= 0),
    floors_above    integer CHECK (floors_above >= 0),
    floors_below    integer CHECK (floors_below >= 0),
    -- Counts only; cimtwin keeps no personal records.
    occupants       integer CHECK (occupants >= 0),
    organisations   integer CHECK (organisations >= 0),
    area_id         bigint REFERENCES areas (id) ON DELETE SET NULL,  -- derived spatially when not given
    geom            geometry(MultiPolygon, 4326) NOT NULL CHECK (ST_IsValid(geom)),
    properties      jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX buildings_geom ON buildings USING gist (geom);
CREATE INDEX buildings_area ON buildings (area_id);

CREATE TABLE floors (
    id           bigserial PRIMARY KEY,
    building_id  bigint NOT NULL REFERENCES buildings (id) ON DELETE CASCADE,
    level        integer NOT NULL,                    -- 0 ground, -1 first basement, …
    name         text,
    elevation    double precision,                    -- metres above the building's base
    height       double precision CHECK (height > 0),
    geom         geometry(MultiPolygon, 4326) CHECK (geom IS NULL OR ST_IsValid(geom)),
    properties   jsonb NOT NULL DEFAULT '{}',
    UNIQUE (building_id, level)
);
CREATE INDEX floors_geom ON floors USING gist (geom);

CREATE TABLE rooms (
    id             bigserial PRIMARY KEY,
    floor_id       bigint NOT NULL REFERENCES floors (id) ON DELETE CASCADE,
    ext_id         text,
    name           text,
    use            text,
    occupants      integer CHECK (occupants >= 0),
    organisations  integer CHECK (organisations >= 0),
    geom           geometry(MultiPolygon, 4326) CHECK (geom IS NULL OR ST_IsValid(geom)),
    properties     jsonb NOT NULL DEFAULT '{}',
    UNIQUE (floor_id, ext_id)
);
CREATE INDEX rooms_geom ON rooms USING gist (geom);
CREATE INDEX rooms_floor ON rooms (floor_id);

-- The code list of component kinds (部件), bilingual.
CREATE TABLE component_kinds (
    code     text PRIMARY KEY CHECK (code ~ '^[a-z][a-z0-9_]{0,62}$'),
    name_en  text NOT NULL,
    name_zh  text NOT NULL
);
INSERT INTO component_kinds (code, name_en, name_zh) VALUES
    ('hydrant', 'Fire hydrant', '消火栓'),
    ('manhole_cover', 'Manhole cover', '井盖'),
    ('gas_valve', 'Gas valve', '燃气阀门'),
    ('gas_pipe', 'Gas pipeline', '燃气管线'),
    ('elevator', 'Elevator', '电梯'),
    ('smoke_detector', 'Smoke detector', '烟感探测器'),
    ('gas_detector', 'Combustible gas detector', '可燃气体探测器'),
    ('extinguisher', 'Fire extinguisher', '灭火器'),
    ('sprinkler', 'Sprinkler', '喷淋'),
    ('street_lamp', 'Street lamp', '路灯'),
    ('camera', 'Camera', '摄像头'),
    ('water_level_gauge', 'Water level gauge', '水位计'),
    ('bridge', 'Bridge', '桥梁'),
    ('slope', 'Slope', '边坡'),
    ('ev_charger', 'EV charger', '电动车充电桩'),
    ('power_cabinet', 'Power distribution cabinet', '配电柜');

CREATE TABLE components (
    id           bigserial PRIMARY KEY,
    ext_id       text UNIQUE,
    kind         text NOT NULL REFERENCES component_kinds (code),
    name         text,
    area_id      bigint REFERENCES areas (id) ON DELETE SET NULL,      -- derived spatially when not given
    building_id  bigint REFERENCES buildings (id) ON DELETE SET NULL,  -- derived spatially when not given
    floor_id     bigint REFERENCES floors (id) ON DELETE SET NULL,
    room_id      bigint REFERENCES rooms (id) ON DELETE SET NULL,
    geom         geometry(Geometry, 4326) NOT NULL CHECK (ST_IsValid(geom)),
    properties   jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX components_geom ON components USING gist (geom);
CREATE INDEX components_kind ON components (kind);
CREATE INDEX components_building ON components (building_id);

-- Responsible parties (责任主体): organisations, with contact points and channels.
CREATE TABLE parties (
    id          bigserial PRIMARY KEY,
    code        text NOT NULL UNIQUE,
    name        text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('property_manager', 'enterprise', 'street_office',
                                              'community_committee', 'department', 'other')),
    contacts    jsonb NOT NULL DEFAULT '[]',   -- duty phone numbers, mailboxes
    channels    jsonb NOT NULL DEFAULT '{}',   -- notification channels (webhook, MQTT, SMS gateway)
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- A party answers for exactly one target: an area, a building, a room, a component,
-- or a component kind within an area.
CREATE TABLE party_assignments (
    id              bigserial PRIMARY KEY,
    party_id        bigint NOT NULL REFERENCES parties (id) ON DELETE CASCADE,
    area_id         bigint REFERENCES areas (id) ON DELETE CASCADE,
    building_id     bigint REFERENCES buildings (id) ON DELETE CASCADE,
    room_id         bigint REFERENCES rooms (id) ON DELETE CASCADE,
    component_id    bigint REFERENCES components (id) ON DELETE CASCADE,
    component_kind  text REFERENCES component_kinds (code),
    role            text NOT NULL DEFAULT 'responsible',
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (num_nonnulls(area_id, building_id, room_id, component_id) = 1),
    CHECK (component_kind IS NULL OR area_id IS NOT NULL)
);
CREATE UNIQUE INDEX party_assignments_unique ON party_assignments
    (party_id, coalesce(area_id, 0), coalesce(building_id, 0), coalesce(room_id, 0),
     coalesce(component_id, 0), coalesce(component_kind, ''), role);

-- Every sensor has a place: a component, a room or a building (or, for outdoor
-- devices, the device's own point).
ALTER TABLE sensors
    ADD COLUMN component_id bigint REFERENCES components (id) ON DELETE SET NULL,
    ADD COLUMN room_id      bigint REFERENCES rooms (id) ON DELETE SET NULL,
    ADD COLUMN building_id  bigint REFERENCES buildings (id) ON DELETE SET NULL;
ALTER TABLE devices ADD COLUMN geom geometry(Point, 4326);
CREATE INDEX sensors_component ON sensors (component_id);
CREATE INDEX sensors_room ON sensors (room_id);
CREATE INDEX sensors_building ON sensors (building_id);
CREATE INDEX devices_geom ON devices USING gist (geom);
