-- The twin API caches each building's structure (floors, rooms, components, sensors and the
-- fields it shows of them) and checks this counter on every request: any change to those
-- tables moves it, so the next tree is built from the new structure. Live values (latest,
-- alerts) are never cached.
CREATE TABLE twin_structure_state (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    generation  bigint NOT NULL DEFAULT 0
);
INSERT INTO twin_structure_state DEFAULT VALUES;

-- Moved once per transaction, at its commit: the counter row is locked only from then to the
-- end of the commit, so writers of these tables never wait on it while holding other locks
-- (no deadlocks with each other, or with the sensors → alert_rules_state trigger of 0009).
CREATE FUNCTION twin_structure_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('cimtwin.twin_structure_moved', true) IS DISTINCT FROM 'on' THEN
        UPDATE twin_structure_state SET generation = generation + 1;
        PERFORM set_config('cimtwin.twin_structure_moved', 'on', true);  -- until the transaction ends
    END IF;
    RETURN NULL;
END $$;

-- TRUNCATE cannot wait for the commit (constraint triggers are row triggers); it locks the whole table anyway.
CREATE FUNCTION twin_structure_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE twin_structure_state SET generation = generation + 1;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER buildings_changed_for_twin AFTER INSERT OR UPDATE OR DELETE ON buildings
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION twin_structure_changed();
CREATE CONSTRAINT TRIGGER floors_changed_for_twin AFTER INSERT OR UPDATE OR DELETE ON floors
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION twin_structure_changed();
CREATE CONSTRAINT TRIGGER rooms_changed_for_twin AFTER INSERT OR UPDATE OR DELETE ON rooms
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION twin_structure_changed();
CREATE CONSTRAINT TRIGGER components_changed_for_twin AFTER INSERT OR UPDATE OR DELETE ON components
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION twin_structure_changed();
-- (deleting a device deletes its sensors, which fires this)
CREATE CONSTRAINT TRIGGER sensors_changed_for_twin AFTER INSERT OR UPDATE OR DELETE ON sensors
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION twin_structure_changed();
-- of a device, the tree shows only its ext_id
CREATE CONSTRAINT TRIGGER devices_renamed_for_twin AFTER UPDATE OF ext_id ON devices
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION twin_structure_changed();

CREATE TRIGGER buildings_truncated_for_twin AFTER TRUNCATE ON buildings
    FOR EACH STATEMENT EXECUTE FUNCTION twin_structure_truncated();
CREATE TRIGGER floors_truncated_for_twin AFTER TRUNCATE ON floors
    FOR EACH STATEMENT EXECUTE FUNCTION twin_structure_truncated();
CREATE TRIGGER rooms_truncated_for_twin AFTER TRUNCATE ON rooms
    FOR EACH STATEMENT EXECUTE FUNCTION twin_structure_truncated();
CREATE TRIGGER components_truncated_for_twin AFTER TRUNCATE ON components
    FOR EACH STATEMENT EXECUTE FUNCTION twin_structure_truncated();
CREATE TRIGGER sensors_truncated_for_twin AFTER TRUNCATE ON sensors
    FOR EACH STATEMENT EXECUTE FUNCTION twin_structure_truncated();
CREATE TRIGGER devices_truncated_for_twin AFTER TRUNCATE ON devices
    FOR EACH STATEMENT EXECUTE FUNCTION twin_structure_truncated();
