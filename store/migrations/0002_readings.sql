-- Latest value per sensor; upserted by the writer, never moved backwards in time.
CREATE TABLE latest (
    sensor_id    bigint PRIMARY KEY,
    time         timestamptz NOT NULL,
    value        double precision NOT NULL,
    received_at  timestamptz NOT NULL
);
