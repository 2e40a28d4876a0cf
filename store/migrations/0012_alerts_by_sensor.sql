-- The twin's live state reads each sensor's unfinished alerts; closed ones pile up.
CREATE INDEX alerts_unfinished_sensor ON alerts (sensor_id, severity)
    WHERE status IN ('open', 'acknowledged', 'dispatched');
