-- Late readings are evaluated in time order (twin/alerting.py). When one shows that the rule
-- would not have raised an alert, the engine withdraws it: the alert is closed, withdrawn_at is
-- set and its trail gets a 'withdrawn' event (actor 'engine', a note naming the late reading).
-- An alert a person has already acted on is not withdrawn; it gets a 'note' event instead.
ALTER TABLE alerts ADD COLUMN withdrawn_at timestamptz;

ALTER TABLE alert_events DROP CONSTRAINT alert_events_action_check;
ALTER TABLE alert_events ADD CONSTRAINT alert_events_action_check
    CHECK (action IN ('raised', 'repeated', 'acknowledged', 'dispatched', 'escalated', 'cleared', 'resolved',
                      'closed', 'reopened', 'note', 'withdrawn'));

-- The engine looks up a sensor's (rule, sensor) alerts by the time they were raised when it
-- re-evaluates late readings.
CREATE INDEX alerts_sensor_rule_raised ON alerts (sensor_id, rule_id, raised_at) WHERE rule_id IS NOT NULL;
