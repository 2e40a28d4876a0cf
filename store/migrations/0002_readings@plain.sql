-- Without TimescaleDB: readings are range-partitioned by week (partitions made on
-- demand by cimtwin_ensure_readings_partitions), and the rollups are tables that
-- the writer keeps up to date in the same transaction as the raw rows.
CREATE TABLE readings (
    time         timestamptz NOT NULL,
    sensor_id    bigint NOT NULL,
    value        double precision NOT NULL,
    received_at  timestamptz NOT NULL,
    PRIMARY KEY (sensor_id, time)
) PARTITION BY RANGE (time);

CREATE TABLE readings_1m (
    sensor_id  bigint NOT NULL,
    bucket     timestamptz NOT NULL,
    count      bigint NOT NULL,
    sum        double precision NOT NULL,
    min        double precision NOT NULL,
    max        double precision NOT NULL,
    PRIMARY KEY (sensor_id, bucket)
);

CREATE TABLE readings_1h (LIKE readings_1m INCLUDING ALL);

-- Weeks start on Monday 00:00 UTC; partition names are readings_pYYYYMMDD.
CREATE FUNCTION cimtwin_ensure_readings_partitions(week_starts timestamptz[])
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    week   timestamptz;
    made   integer := 0;
    name   text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('cimtwin_readings_partitions'));
    FOREACH week IN ARRAY week_starts LOOP
        name := 'readings_p' || to_char(week AT TIME ZONE 'UTC', 'YYYYMMDD');
        IF to_regclass(name) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF readings FOR VALUES FROM (%L) TO (%L)',
                           name, week, week + interval '7 days');
            made := made + 1;
        END IF;
    END LOOP;
    RETURN made;
END $$;

-- Drops whole weekly partitions (and rollup rows) that end before the cut-off.
CREATE FUNCTION cimtwin_drop_readings_before(cutoff timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    part     record;
    dropped  integer := 0;
BEGIN
    FOR part IN
        SELECT c.oid::regclass AS rel,
               (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz AS upper_bound
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'readings'::regclass
    LOOP
        IF part.upper_bound <= cutoff THEN
            EXECUTE format('DROP TABLE %s', part.rel);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    DELETE FROM readings_1m WHERE bucket < cutoff;
    DELETE FROM readings_1h WHERE bucket < cutoff;
    RETURN dropped;
END $$;
