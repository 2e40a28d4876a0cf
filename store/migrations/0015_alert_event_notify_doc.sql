-- The SSE stream's wake-up carries the event's document: the outbox trigger, which builds it
-- anyway, notifies '<id> <document>' in place of the bare id the old trigger sent, so the stream
-- passes an event on without reading it back. A document too long for a notification (the
-- payload limit is 8,000 bytes) is announced by its id alone, and the stream reads it.
CREATE OR REPLACE FUNCTION alert_events_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    doc      jsonb := cimtwin_alert_event_doc(NEW);
    doc_text text := doc::text;
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
    PERFORM pg_notify('cimtwin_alert_events',
                      CASE WHEN octet_length(doc_text) <= 7900 THEN NEW.id || ' ' || doc_text ELSE NEW.id::text END);
    RETURN NULL;
END $$;

DROP TRIGGER alert_events_notify ON alert_events;
DROP FUNCTION alert_events_notify();
