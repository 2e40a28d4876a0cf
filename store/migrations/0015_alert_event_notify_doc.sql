-- The SSE stream's wake-up carries the event's document. Each event's MQTT outbox row (one per
-- event, written by alert_events_outbox with the document the stream sends) notifies
-- '<event id> <document>' as it is inserted, in place of the bare id alert_events_notify sent,
-- so the stream passes the event on without reading it back. A document too long for a
-- notification (the payload limit is 8,000 bytes) is announced by its id alone, and the stream
-- reads it. Rows are inserted in event order, so the notifications come in that order too.
CREATE FUNCTION notification_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    doc text := NEW.payload::text;
BEGIN
    PERFORM pg_notify('cimtwin_alert_events',
                      CASE WHEN octet_length(doc) <= 7900 THEN NEW.alert_event_id || ' ' || doc
                           ELSE NEW.alert_event_id::text END);
    RETURN NULL;
END $$;

CREATE TRIGGER notification_outbox_notify AFTER INSERT ON notification_outbox
    FOR EACH ROW WHEN (NEW.channel = 'mqtt') EXECUTE FUNCTION notification_outbox_notify();

DROP TRIGGER alert_events_notify ON alert_events;
DROP FUNCTION alert_events_notify();
