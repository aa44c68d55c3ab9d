/* SPDX-License-Identifier: MIT */
/*
 * test-drop: a handler that lets go of its channel's last reference in the middle of a batch.
 * Peer 1 sends peer 2 four messages in one turn of the loop (the first goes alone, the other
 * three as one DeliverBatch); peer 2's handler drops its channel at the second. Then the rest
 * of that batch must not be handed out. Before, the loop went on with the freed channel: the
 * AddressSanitizer and valgrind runs of this test report that (a plain build may read the freed
 * memory unnoticed). Runs on the bus of $DBUS_SESSION_BUS_ADDRESS; exit status 0 when peer 2
 * saw exactly two messages.
 */
#include <stdio.h>
#include <stdlib.h>

#include <ipchannel.h>

static ipchannel *sender, *receiver;
static int received;

static void on_message(ipchannel *ch, uint32_t from, const char *event, GVariant *data, void *userdata) {
        received++;
        if (received == 2)
                receiver = ipchannel_unref(receiver);
}

static void on_join(ipchannel *ch, uint32_t id, const char *event, GVariant *data, void *userdata) {
        if (id != 2)
                return;
        for (int32_t i = 0; i < 4; i++)
                if (ipchannel_send(sender, 2, g_variant_new_int32(i)) < 0)
                        fprintf(stderr, "send %d failed\n", i);
}

/* Peer 2 connects once peer 1 is: peer 1 then sees it join (a peer already there when a channel
 * connects is found, not announced). */
static void on_connect(ipchannel *ch, uint32_t id, const char *event, GVariant *data, void *userdata) {
        int r = ipchannel_connect(receiver);

        if (r < 0)
                fprintf(stderr, "test-drop: connect of peer 2: %s\n", g_strerror(-r));
}

static int on_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        return sd_event_exit(sd_event_source_get_event(s), 0);
}

int main(void) {
        sd_event *e = NULL;
        int r;

        r = sd_event_new(&e);
        if (r >= 0)
                r = ipchannel_new(&sender, "drop");
        if (r >= 0)
                r = ipchannel_new(&receiver, "drop");
        if (r >= 0)
                r = ipchannel_set_peer_id(sender, 1);
        if (r >= 0)
                r = ipchannel_set_peer_id(receiver, 2);
        if (r >= 0)
                r = ipchannel_attach_event(sender, e, 0);
        if (r >= 0)
                r = ipchannel_attach_event(receiver, e, 0);
        if (r >= 0)
                r = ipchannel_on(sender, IPCHANNEL_EVENT_CONNECT, on_connect, NULL, NULL);
        if (r >= 0)
                r = ipchannel_on(sender, IPCHANNEL_EVENT_PEER_JOIN, on_join, NULL, NULL);
        if (r >= 0)
                r = ipchannel_on(receiver, IPCHANNEL_EVENT_MESSAGE, on_message, NULL, NULL);
        if (r >= 0)
                r = ipchannel_connect(sender);
        if (r >= 0)
                r = sd_event_add_time_relative(e, NULL, CLOCK_MONOTONIC, 3 * 1000 * 1000, 0, on_timeout, NULL);
        if (r >= 0)
                r = sd_event_loop(e);
        if (r < 0)
                fprintf(stderr, "test-drop: %s\n", g_strerror(-r));
        ipchannel_unref(sender);
        ipchannel_unref(receiver);
        sd_event_unref(e);
        if (received != 2)
                fprintf(stderr, "test-drop: peer 2 saw %d messages, not 2\n", received);
        return r >= 0 && received == 2 ? 0 : 1;
}
