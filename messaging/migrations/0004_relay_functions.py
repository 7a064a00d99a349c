"""The relay's statements as SQL functions, one round trip each.

Each function takes the tenant as its first argument and enters that tenant
first (``messaging_enter_tenant``: a transaction-local ``set_config`` that
refuses to switch from another tenant), so a call made in autocommit mode is
a whole tenant scope in one statement: its own transaction, ended by the
statement, under row-level security. Inside a request transaction the
tenant is already set and entering it again changes nothing.

The functions are ``SECURITY INVOKER``: they run with the caller's grants
and under the caller's row-level-security policies. Which rules they apply,
and why in this order, is told in ``messaging/store.py``.
"""

from django.db import migrations, models

FUNCTIONS = r"""
CREATE FUNCTION messaging_enter_tenant(p_tenant uuid) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_current text := current_setting('app.current_tenant_id', true);
BEGIN
    IF p_tenant IS NULL THEN
        RAISE EXCEPTION 'a tenant scope needs a tenant'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF v_current IS NOT NULL AND v_current <> '' AND v_current <> p_tenant::text
    THEN
        RAISE EXCEPTION 'a tenant scope cannot switch tenants'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    PERFORM set_config('app.current_tenant_id', p_tenant::text, true);
END
$$;

-- Whether a device may act: 'ok', or why not. With p_epoch, a newer socket
-- of the device means 'replaced'; with p_room, the device's member must be
-- in that room.
CREATE FUNCTION messaging_device_state(
    p_tenant uuid, p_device uuid, p_epoch bigint, p_room uuid
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_status text;
    v_member_active boolean;
    v_epoch bigint;
    v_in_room boolean;
BEGIN
    PERFORM messaging_enter_tenant(p_tenant);
    SELECT d.status, m.is_active, q.connection_epoch,
           (p_room IS NULL OR EXISTS (
                SELECT 1 FROM messaging_roommembership AS r
                 WHERE r.room_id = p_room AND r.member_id = d.member_id))
      INTO v_status, v_member_active, v_epoch, v_in_room
      FROM enrollment_device AS d
      JOIN tenants_member AS m ON m.id = d.member_id
      LEFT JOIN messaging_devicequeue AS q ON q.device_id = d.id
     WHERE d.id = p_device;
    IF NOT FOUND THEN
        RETURN 'device_not_active';
    ELSIF v_status <> 'active' THEN
        RETURN 'device_revoked';
    ELSIF NOT v_member_active THEN
        RETURN 'member_inactive';
    ELSIF p_epoch IS NOT NULL AND v_epoch > p_epoch THEN
        RETURN 'replaced';
    ELSIF NOT v_in_room THEN
        RETURN 'room_not_found';
    END IF;
    RETURN 'ok';
END
$$;

-- Open a relay socket: lock the device row, read its status and member,
-- and only for an active device of an active member bump the socket epoch
-- and record the wake-up channel of the socket's process (creating the
-- queue row on first use). Returns the channel it replaced.
CREATE FUNCTION messaging_open_socket(
    p_tenant uuid, p_device uuid, p_member uuid, p_channel text,
    OUT status text, OUT member_active boolean, OUT epoch bigint,
    OUT acked_seq bigint, OUT previous_channel text
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM messaging_enter_tenant(p_tenant);
    SELECT d.status, m.is_active INTO status, member_active
      FROM enrollment_device AS d
      JOIN tenants_member AS m ON m.id = d.member_id
     WHERE d.id = p_device AND d.member_id = p_member
       FOR NO KEY UPDATE OF d;
    IF NOT FOUND OR status <> 'active' OR NOT member_active THEN
        RETURN;
    END IF;
    SELECT q.relay_channel INTO previous_channel
      FROM messaging_devicequeue AS q WHERE q.device_id = p_device;
    INSERT INTO messaging_devicequeue AS q
           (device_id, tenant_id, last_seq, acked_seq, depth, connection_epoch,
            relay_channel)
    VALUES (p_device, p_tenant, 0, 0, 0, 1, p_channel)
    ON CONFLICT (device_id) DO UPDATE
       SET connection_epoch = q.connection_epoch + 1, relay_channel = p_channel
    RETURNING q.connection_epoch, q.acked_seq INTO epoch, acked_seq;
END
$$;

-- Store one send: lock the device rows it depends on, then store it as
-- messaging_send_locked does.
--
-- The sender's row is locked with the room's active devices, in id order
-- (the order batches take device rows): a revocation of the sender either
-- committed before the checks, which then refuse, or waits for this send.
CREATE FUNCTION messaging_send(
    p_tenant uuid, p_device uuid, p_member uuid, p_epoch bigint, p_room uuid,
    p_client_id text, p_message uuid, p_now timestamptz,
    p_devices uuid[], p_ciphertexts bytea[], p_cap integer,
    OUT outcome text, OUT message_id uuid, OUT created_at timestamptz,
    OUT devices uuid[], OUT seqs bigint[], OUT depths integer[],
    OUT channels text[], OUT missing uuid[], OUT extra uuid[]
)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM messaging_enter_tenant(p_tenant);
    PERFORM 1 FROM enrollment_device AS d
     WHERE d.id IN (
            SELECT p_device
            UNION
            SELECT a.id FROM messaging_roommembership AS m
              JOIN enrollment_device AS a ON a.member_id = m.member_id
             WHERE m.room_id = p_room AND a.status = 'active')
     ORDER BY d.id
       FOR NO KEY UPDATE OF d;
    SELECT * INTO outcome, message_id, created_at, devices, seqs, depths,
                  channels, missing, extra
      FROM messaging_send_locked(
            p_tenant, p_device, p_member, p_epoch, p_room, p_client_id,
            p_message, p_now, p_devices, p_ciphertexts, p_cap);
END
$$;

-- Store one send whose sender and room device rows the caller has locked:
-- the sender's checks, idempotency on the client id, one envelope per
-- active recipient device, the queue cap, then the message and its
-- deliveries at each device's next sequence number. A refusal returns
-- before anything is written (queue rows created for the named devices
-- aside, which hold nothing).
CREATE FUNCTION messaging_send_locked(
    p_tenant uuid, p_device uuid, p_member uuid, p_epoch bigint, p_room uuid,
    p_client_id text, p_message uuid, p_now timestamptz,
    p_devices uuid[], p_ciphertexts bytea[], p_cap integer,
    OUT outcome text, OUT message_id uuid, OUT created_at timestamptz,
    OUT devices uuid[], OUT seqs bigint[], OUT depths integer[],
    OUT channels text[], OUT missing uuid[], OUT extra uuid[]
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_given uuid[] := ARRAY(SELECT x FROM unnest(p_devices) AS x ORDER BY x);
    v_expected uuid[];
BEGIN
    outcome := messaging_device_state(p_tenant, p_device, p_epoch, p_room);
    IF outcome <> 'ok' THEN
        RETURN;
    END IF;

    SELECT m.id, m.created_at INTO message_id, created_at
      FROM messaging_message AS m
     WHERE m.sender_device_id = p_device AND m.client_message_id = p_client_id;
    IF FOUND THEN
        outcome := 'repeat';
        RETURN;
    END IF;

    -- Lock the recipients' device rows in id order, before their queue rows,
    -- the order revocation takes them: a revocation either committed before
    -- (the device is stale) or waits for this send and then purges it.
    v_expected := ARRAY(
        SELECT locked.id FROM (
            SELECT d.id
              FROM enrollment_device AS d
              JOIN messaging_roommembership AS r ON r.member_id = d.member_id
             WHERE r.room_id = p_room AND d.status = 'active' AND d.id <> p_device
             ORDER BY d.id
               FOR NO KEY UPDATE OF d
        ) AS locked ORDER BY locked.id);
    IF v_given <> v_expected THEN
        extra := ARRAY(SELECT unnest(v_given) EXCEPT SELECT unnest(v_expected));
        missing := ARRAY(SELECT unnest(v_expected) EXCEPT SELECT unnest(v_given));
        devices := ARRAY(
            SELECT d.id FROM enrollment_device AS d
             WHERE d.id = ANY(extra) AND d.status = 'revoked' ORDER BY d.id);
        outcome := CASE WHEN cardinality(devices) > 0
                        THEN 'stale' ELSE 'mismatch' END;
        RETURN;
    END IF;

    INSERT INTO messaging_devicequeue
           (device_id, tenant_id, last_seq, acked_seq, depth, connection_epoch)
    SELECT x, p_tenant, 0, 0, 0, 0
      FROM unnest(v_given) AS x
     WHERE NOT EXISTS (
            SELECT 1 FROM messaging_devicequeue AS q WHERE q.device_id = x)
     ORDER BY x
    ON CONFLICT (device_id) DO NOTHING;
    devices := ARRAY(
        SELECT q.device_id FROM (
            SELECT q.device_id, q.depth FROM messaging_devicequeue AS q
             WHERE q.device_id = ANY(v_given)
             ORDER BY q.device_id
               FOR UPDATE
        ) AS q WHERE q.depth >= p_cap ORDER BY q.device_id);
    IF cardinality(devices) > 0 THEN
        outcome := 'queue_full';
        RETURN;
    END IF;

    INSERT INTO messaging_message
           (id, tenant_id, room_id, sender_device_id, sender_member_id,
            client_message_id, created_at)
    VALUES (p_message, p_tenant, p_room, p_device, p_member, p_client_id, p_now)
    ON CONFLICT (sender_device_id, client_message_id) DO NOTHING;
    IF NOT FOUND THEN
        -- A concurrent first attempt with the same client id committed.
        SELECT m.id, m.created_at INTO message_id, created_at
          FROM messaging_message AS m
         WHERE m.sender_device_id = p_device
           AND m.client_message_id = p_client_id;
        outcome := 'repeat';
        devices := NULL;
        RETURN;
    END IF;

    WITH advanced AS (
        UPDATE messaging_devicequeue AS q
           SET last_seq = q.last_seq + 1, depth = q.depth + 1
         WHERE q.device_id = ANY(v_given)
        RETURNING q.device_id, q.last_seq, q.depth, q.relay_channel
    ), stored AS (
        INSERT INTO messaging_delivery
               (tenant_id, device_id, seq, message_id, room_id, sender_device_id,
                sender_member_id, ciphertext, created_at)
        SELECT p_tenant, a.device_id, a.last_seq, p_message, p_room, p_device,
               p_member, e.ciphertext, p_now
          FROM advanced AS a
          JOIN unnest(p_devices, p_ciphertexts) AS e(device_id, ciphertext)
            ON e.device_id = a.device_id
        RETURNING 1
    )
    SELECT coalesce(array_agg(a.device_id ORDER BY a.device_id), '{}'),
           coalesce(array_agg(a.last_seq ORDER BY a.device_id), '{}'),
           coalesce(array_agg(a.depth ORDER BY a.device_id), '{}'),
           coalesce(array_agg(a.relay_channel ORDER BY a.device_id), '{}')
      INTO devices, seqs, depths, channels
      FROM advanced AS a;
    outcome := 'stored';
    message_id := p_message;
    created_at := p_now;
END
$$;

-- Queued envelopes of several devices of one tenant, each after its own
-- mark, at most p_limit per device, in (device, seq) order.
CREATE FUNCTION messaging_inbox(
    p_tenant uuid, p_devices uuid[], p_after bigint[], p_limit integer
) RETURNS TABLE (
    device_id uuid, seq bigint, message_id uuid, room_id uuid,
    sender_device_id uuid, sender_member_id uuid, ciphertext bytea,
    created_at timestamptz
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM messaging_enter_tenant(p_tenant);
    RETURN QUERY
    SELECT x.device_id, x.seq, x.message_id, x.room_id, x.sender_device_id,
           x.sender_member_id, x.ciphertext, x.created_at
      FROM unnest(p_devices, p_after) AS w(device, after)
     CROSS JOIN LATERAL (
            SELECT * FROM messaging_delivery AS d
             WHERE d.device_id = w.device AND d.seq > w.after
             ORDER BY d.seq
             LIMIT p_limit
           ) AS x
     ORDER BY x.device_id, x.seq;
END
$$;

-- Acknowledge up to p_up_to (clamped to the last sequence number): delete
-- those deliveries. With p_epoch, a socket's checks come first.
CREATE FUNCTION messaging_ack(
    p_tenant uuid, p_device uuid, p_epoch bigint, p_up_to bigint,
    OUT outcome text, OUT acked bigint, OUT deleted bigint
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    outcome := 'ok';
    IF p_epoch IS NOT NULL THEN
        outcome := messaging_device_state(p_tenant, p_device, p_epoch, NULL);
        IF outcome <> 'ok' THEN
            RETURN;
        END IF;
    ELSE
        PERFORM messaging_enter_tenant(p_tenant);
    END IF;
    WITH gone AS (
        DELETE FROM messaging_delivery AS d
         WHERE d.device_id = p_device AND d.seq <= p_up_to
        RETURNING 1
    )
    UPDATE messaging_devicequeue AS q
       SET depth = GREATEST(q.depth - (SELECT count(*) FROM gone), 0),
           acked_seq = GREATEST(q.acked_seq, LEAST(p_up_to, q.last_seq))
     WHERE q.device_id = p_device
    RETURNING q.acked_seq, (SELECT count(*) FROM gone) INTO acked, deleted;
    acked := coalesce(acked, 0);
    deleted := coalesce(deleted, 0);
END
$$;
"""

DROP_FUNCTIONS = """
DROP FUNCTION messaging_ack(uuid, uuid, bigint, bigint);
DROP FUNCTION messaging_inbox(uuid, uuid[], bigint[], integer);
DROP FUNCTION messaging_send(
    uuid, uuid, uuid, bigint, uuid, text, uuid, timestamptz, uuid[], bytea[], integer
);
DROP FUNCTION messaging_send_locked(
    uuid, uuid, uuid, bigint, uuid, text, uuid, timestamptz, uuid[], bytea[], integer
);
DROP FUNCTION messaging_open_socket(uuid, uuid, uuid, text);
DROP FUNCTION messaging_device_state(uuid, uuid, bigint, uuid);
DROP FUNCTION messaging_enter_tenant(uuid);
"""


class Migration(migrations.Migration):
    dependencies = [
        ("messaging", "0003_delivery_message_fields"),
    ]

    operations = [
        migrations.AddField(
            model_name="devicequeue",
            name="relay_channel",
            field=models.CharField(blank=True, db_default="", max_length=200),
        ),
        migrations.RunSQL(FUNCTIONS, DROP_FUNCTIONS),
    ]
