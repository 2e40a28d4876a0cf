-- Notifications: every alert event becomes outbox rows in the transaction that wrote it, so
-- every path that changes an alert (engine, API, escalation) notifies without calling anything,
-- and a rolled-back change notifies nobody.
--
-- The document (one per event, the same on MQTT, webhooks and the SSE stream):
--   {"version": 1,
--    "event": {"id", "alert_id", "action", "from_status", "to_status", "actor", "at", "note", "detail"},
--    "alert": {"id", "title", "kind", "severity", "status", "source", "rule_id", "sensor_id",
--              "area_id", "area_code", "building_id", "floor_id", "room_id", "component_id",
--              "party_id", "party_code", "dispatch_level", "escalation_level", "raised_at",
--              "last_at", "last_value", "count", "lon", "lat"}}
-- It shows the alert as it is when the event is inserted: write the alert first, then its event.
-- Times are UTC in ISO 8601 with a "Z", whatever the session's time zone.

CREATE FUNCTION cimtwin_utc_text(t timestamptz) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

CREATE FUNCTION cimtwin_alert_event_doc(e alert_events) RETURNS jsonb
    LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'version', 1,
        'event', jsonb_build_object(
            'id', e.id, 'alert_id', e.alert_id, 'action', e.action, 'from_status', e.from_status,
            'to_status', e.to_status, 'actor', e.actor, 'at', cimtwin_utc_text(e.at), 'note', e.note,
            'detail', e.detail),
        'alert', (
            SELECT jsonb_build_object(
                'id', a.id, 'title', a.title, 'kind', a.kind, 'severity', a.severity, 'status', a.status,
                'source', a.source, 'rule_id', a.rule_id, 'sensor_id', a.sensor_id,
                'area_id', a.area_id, 'area_code', ar.code, 'building_id', a.building_id,
                'floor_id', a.floor_id, 'room_id', a.room_id, 'component_id', a.component_id,
                'party_id', a.party_id, 'party_code', p.code, 'dispatch_level', coalesce(a.dispatch_level, 'none'),
                'escalation_level', a.escalation_level, 'raised_at', cimtwin_utc_text(a.raised_at),
                'last_at', cimtwin_utc_text(a.last_at), 'last_value', a.last_value, 'count', a.count,
                'lon', ST_X(a.geom), 'lat', ST_Y(a.geom))
            FROM alerts a
            LEFT JOIN areas ar ON ar.id = a.area_id
            LEFT JOIN parties p ON p.id = a.party_id
            WHERE a.id = e.alert_id))
$$;

-- A party's webhook: parties.channels->'webhook' is {"url": ..., "secret": ...} (signed), or
-- just the URL as a string (sent unsigned). The secret is read at delivery, never copied here.
CREATE FUNCTION cimtwin_party_webhook_url(channels jsonb) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT nullif(CASE jsonb_typeof(channels -> 'webhook')
                      WHEN 'object' THEN channels -> 'webhook' ->> 'url'
                      WHEN 'string' THEN channels ->> 'webhook'
                  END, '')
$$;

CREATE FUNCTION alert_events_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    doc      jsonb := cimtwin_alert_event_doc(NEW);
    a_party  bigint;
    topic    text;
    hook     text;
BEGIN
    -- The party the alert has now: after an escalation, the new one.
    SELECT a.party_id,
           'cim/v1/alerts/' || coalesce(nullif(translate(ar.code, '/+#', '___'), ''), 'none') || '/' || a.severity,
           cimtwin_party_webhook_url(p.channels)
      INTO a_party, topic, hook
      FROM alerts a
      LEFT JOIN areas ar ON ar.id = a.area_id
      LEFT JOIN parties p ON p.id = a.party_id
     WHERE a.id = NEW.alert_id;
    INSERT INTO notification_outbox (alert_event_id, channel, party_id, target, payload)
    VALUES (NEW.id, 'mqtt', NULL, topic, doc);
    IF hook IS NOT NULL THEN
        INSERT INTO notification_outbox (alert_event_id, channel, party_id, target, payload)
        VALUES (NEW.id, 'webhook', a_party, hook, doc);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER alert_events_outbox AFTER INSERT ON alert_events
    FOR EACH ROW EXECUTE FUNCTION alert_events_outbox();

-- The stream reads each event's document from its MQTT row (one per event).
CREATE UNIQUE INDEX notification_outbox_mqtt_event ON notification_outbox (alert_event_id) WHERE channel = 'mqtt';
-- Head-of-line checks: a target's older undelivered rows.
CREATE INDEX notification_outbox_pending_target ON notification_outbox (channel, target, id)
    WHERE delivered_at IS NULL;
