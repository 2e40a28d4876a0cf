-- With TimescaleDB: readings is a hypertable (compressed, with optional retention
-- applied by `cimtwin migrate` from settings), and the rollups are real-time
-- continuous aggregates with the same names and columns as the plain tables.
CREATE TABLE readings (
    time         timestamptz NOT NULL,
    sensor_id    bigint NOT NULL,
    value        double precision NOT NULL,
    received_at  timestamptz NOT NULL,
    PRIMARY KEY (sensor_id, time)
);
SELECT create_hypertable('readings', by_range('time', INTERVAL '1 day'));
ALTER TABLE readings SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'sensor_id',
    timescaledb.compress_orderby = 'time DESC'
);

CREATE MATERIALIZED VIEW readings_1m
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT sensor_id, time_bucket(INTERVAL '1 minute', time) AS bucket,
       count(*) AS count, sum(value) AS sum, min(value) AS min, max(value) AS max
FROM readings GROUP BY sensor_id, bucket
WITH NO DATA;

CREATE MATERIALIZED VIEW readings_1h
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT sensor_id, time_bucket(INTERVAL '1 hour', time) AS bucket,
       count(*) AS count, sum(value) AS sum, min(value) AS min, max(value) AS max
FROM readings GROUP BY sensor_id, bucket
WITH NO DATA;

SELECT add_continuous_aggregate_policy('readings_1m',
    start_offset => INTERVAL '3 hours', end_offset => INTERVAL '1 minute',
    schedule_interval => INTERVAL '1 minute');
SELECT add_continuous_aggregate_policy('readings_1h',
    start_offset => INTERVAL '3 days', end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '30 minutes');
