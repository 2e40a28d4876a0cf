-- The alert engine matches rules to sensors once, when rules change; a sensor added,
-- moved or re-placed changes the matches too.
CREATE TRIGGER sensors_changed_for_rules AFTER INSERT OR UPDATE OR DELETE ON sensors
    FOR EACH STATEMENT EXECUTE FUNCTION alert_rules_bump_generation();

-- What a rule's scope can ask of a sensor: its quantity, its component's kind, its floor
-- level and where it is (for areas: the point must lie in the area).
CREATE VIEW sensor_scope AS
SELECT s.id AS sensor_id, s.device_id, s.quantity, c.kind AS component_kind, f.level AS floor_level, p.geom
  FROM sensors s
  LEFT JOIN components c ON c.id = s.component_id
  LEFT JOIN rooms r ON r.id = s.room_id
  LEFT JOIN floors f ON f.id = coalesce(c.floor_id, r.floor_id)
  LEFT JOIN LATERAL (SELECT sp.geom FROM sensor_places sp WHERE sp.sensor_id = s.id LIMIT 1) p ON true;

-- The engine locks a batch's states by sensor.
CREATE INDEX alert_rule_state_sensor ON alert_rule_state (sensor_id);
