"""Several relay sends of one tenant in one statement (``messaging_send_batch``).

The relay gathers a tenant's sends (``messaging.store``) and stores them with
one call: one round trip and one commit for all of them, each send still
judged by ``messaging_send_locked`` on its own. Before any send, the function
locks every device row the sends will lock (the named recipients and the
rooms' active devices, the senders among them), then the named recipients'
queue rows, each set in id order: the order a single send and a revocation
take them, so batches on several workers cannot deadlock one another. Each
send runs in its own subtransaction; one that still meets a deadlock or a
lock timeout answers ``retry`` and is sent again alone, and the rest of the
batch stands.
"""

from django.db import migrations

FUNCTIONS = r"""
CREATE FUNCTION messaging_send_batch(
    p_tenant uuid, p_cap integer, p_now timestamptz,
    p_devices uuid[], p_members uuid[], p_epochs bigint[], p_rooms uuid[],
    p_client_ids text[], p_messages uuid[],
    p_first integer[], p_count integer[],
    p_env_devices uuid[], p_ciphertexts bytea[]
) RETURNS TABLE (
    o_index integer, o_outcome text, o_message_id uuid, o_created_at timestamptz,
    o_devices uuid[], o_seqs bigint[], o_depths integer[], o_channels text[],
    o_missing uuid[], o_extra uuid[]
)
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
    v_last integer;
    r record;
BEGIN
    PERFORM messaging_enter_tenant(p_tenant);

    -- Two index-driven parts (device ids; the rooms' members' devices),
    -- not one OR, which would scan every device of the tenant per batch.
    PERFORM 1 FROM enrollment_device AS d
     WHERE d.id IN (
            SELECT unnest(p_env_devices)
            UNION
            SELECT a.id FROM messaging_roommembership AS m
              JOIN enrollment_device AS a ON a.member_id = m.member_id
             WHERE m.room_id = ANY(p_rooms) AND a.status = 'active')
     ORDER BY d.id
       FOR NO KEY UPDATE OF d;
    PERFORM 1 FROM messaging_devicequeue AS q
     WHERE q.device_id = ANY(p_env_devices)
     ORDER BY q.device_id
       FOR UPDATE;

    FOR i IN 1 .. coalesce(cardinality(p_devices), 0) LOOP
        v_last := p_first[i] + p_count[i] - 1;
        BEGIN
            SELECT * INTO r FROM messaging_send_locked(
                p_tenant, p_devices[i], p_members[i], p_epochs[i], p_rooms[i],
                p_client_ids[i], p_messages[i], p_now,
                coalesce(p_env_devices[p_first[i]:v_last], '{}'),
                coalesce(p_ciphertexts[p_first[i]:v_last], '{}'),
                p_cap);
            o_outcome := r.outcome;
            o_message_id := r.message_id;
            o_created_at := r.created_at;
            o_devices := r.devices;
            o_seqs := r.seqs;
            o_depths := r.depths;
            o_channels := r.channels;
            o_missing := r.missing;
            o_extra := r.extra;
        EXCEPTION WHEN deadlock_detected OR lock_not_available THEN
            o_outcome := 'retry';
            o_message_id := NULL;
            o_created_at := NULL;
            o_devices := NULL;
            o_seqs := NULL;
            o_depths := NULL;
            o_channels := NULL;
            o_missing := NULL;
            o_extra := NULL;
        END;
        o_index := i;
        RETURN NEXT;
    END LOOP;
END
$$;
"""

DROP_FUNCTIONS = """
DROP FUNCTION messaging_send_batch(
    uuid, integer, timestamptz, uuid[], uuid[], bigint[], uuid[], text[], uuid[],
    integer[], integer[], uuid[], bytea[]
);
"""


class Migration(migrations.Migration):
    dependencies = [
        ("messaging", "0004_relay_functions"),
    ]

    operations = [
        migrations.RunSQL(FUNCTIONS, DROP_FUNCTIONS),
    ]
