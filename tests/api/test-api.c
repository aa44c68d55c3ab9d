/* SPDX-License-Identifier: MIT */
/* Uses only the installed public header and shared library, as a program outside would. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ipchannel.h>

#define CHECK(expr)                                                              \
        do {                                                                     \
                if (!(expr)) {                                                   \
                        fprintf(stderr, "%s:%d: failed: %s\n", __FILE__, __LINE__, #expr); \
                        exit(EXIT_FAILURE);                                      \
                }                                                                \
        } while (0)

static void on_any(ipchannel *ch, uint32_t sender, const char *event, GVariant *data, void *userdata) {
}

int main(void) {
        g_autoptr(ipchannel) ch = NULL;
        ipchannel_slot *slot = NULL;
        const char *reason = NULL;

        CHECK(ipchannel_new(&ch, "bad-name") == -EINVAL);
        CHECK(ipchannel_check_app_name("bad-name", &reason) == -EINVAL && reason && *reason);
        CHECK(ipchannel_new(NULL, "app") == -EINVAL);
        CHECK(ipchannel_new(&ch, "api_test") == 0);
        CHECK(strcmp(ipchannel_get_app(ch), "api_test") == 0);

        CHECK(ipchannel_get_peer_id(ch) == 0);
        CHECK(ipchannel_is_connected(ch) == 0);
        CHECK(ipchannel_has_peer(ch, 1) == -ENOTCONN);
        CHECK(ipchannel_set_peer_id(ch, 0) == -EINVAL);
        CHECK(ipchannel_set_peer_id(ch, IPCHANNEL_ALL) == -EINVAL);
        CHECK(ipchannel_set_peer_id(ch, 3) == 0);

        CHECK(ipchannel_on(ch, "message", NULL, NULL, NULL) == -EINVAL);
        CHECK(ipchannel_on(ch, "", on_any, NULL, NULL) == -EINVAL);
        CHECK(ipchannel_on(ch, "message", on_any, NULL, &slot) == 0 && slot);
        CHECK(ipchannel_once(ch, "x", on_any, NULL, NULL) == 0);
        CHECK(ipchannel_slot_unref(slot) == NULL);
        CHECK(ipchannel_slot_unref(NULL) == NULL);

        /* Listeners are bounded: the "x" listener above is one of two. */
        CHECK(ipchannel_set_listener_max(ch, 0) == -EINVAL);
        CHECK(ipchannel_set_listener_max(ch, 2) == 0);
        CHECK(ipchannel_on(ch, "y", on_any, NULL, NULL) == 0);
        CHECK(ipchannel_on(ch, "z", on_any, NULL, NULL) == -ENOBUFS);
        CHECK(ipchannel_set_listener_max(ch, IPCHANNEL_LISTENER_MAX_DEFAULT) == 0);
        CHECK(ipchannel_on(ch, "z", on_any, NULL, NULL) == 0);

        /* Before connect, sends are queued up to the bound. */
        CHECK(ipchannel_set_queue_max(ch, 2) == 0);
        CHECK(ipchannel_send(ch, 1, g_variant_new_string("one")) == 0);
        CHECK(ipchannel_emit(ch, IPCHANNEL_ALL, "ev", NULL) == 0);
        CHECK(ipchannel_send(ch, 1, g_variant_new_string("three")) == -ENOBUFS);

        /* Refused at send time: a peer id of 0, local events, types D-Bus cannot carry. */
        CHECK(ipchannel_send(ch, 0, NULL) == -EINVAL);
        CHECK(ipchannel_emit(ch, 1, "connect", NULL) == -EINVAL);
        CHECK(ipchannel_emit(ch, 1, "error", NULL) == -EINVAL);
        CHECK(ipchannel_send(ch, 1, g_variant_new_maybe(G_VARIANT_TYPE_INT32, NULL)) == -EINVAL);
        /* Also when the bad type hides inside a variant: refused now, not when flushed. */
        CHECK(ipchannel_set_queue_max(ch, 100) == 0);
        CHECK(ipchannel_send(ch, 1, g_variant_new_variant(g_variant_new_maybe(G_VARIANT_TYPE_INT32, NULL))) ==
              -EINVAL);
        CHECK(ipchannel_send(ch, 1, g_variant_new_variant(g_variant_new_int32(7))) == 0);
        /* A payload type that passed once is not checked again, unless it holds a variant:
         * what a variant holds differs from one payload to the next. */
        CHECK(ipchannel_send(ch, 1, g_variant_new_parsed("@av [<1>]")) == 0);
        CHECK(ipchannel_send(ch, 1, g_variant_new_parsed("@av [<@mi 5>]")) == -EINVAL);
        CHECK(ipchannel_send(ch, 1, g_variant_new("(si)", "a", 1)) == 0);
        CHECK(ipchannel_send(ch, 1, g_variant_new("(si)", "b", 2)) == 0);

        /* A channel belongs to the process that made it: a forked child gets -ECHILD, twice
         * (the pid the library keeps is forgotten at fork), and the parent goes on. */
        {
                pid_t child = fork();
                int status;

                CHECK(child >= 0);
                if (child == 0) {
                        GVariant *v = g_variant_ref_sink(g_variant_new_string("from the child"));
                        int r1 = ipchannel_send(ch, 1, v), r2 = ipchannel_emit(ch, 1, "ev", v);

                        g_variant_unref(v);
                        _exit(r1 == -ECHILD && r2 == -ECHILD ? 0 : 1);
                }
                CHECK(waitpid(child, &status, 0) == child);
                CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
                CHECK(ipchannel_send(ch, 1, g_variant_new_string("from the parent")) == 0);
        }

        CHECK(ipchannel_ref(ch) == ch);
        CHECK(ipchannel_unref(ch) == NULL);
        CHECK(ipchannel_unref(NULL) == NULL);

        printf("public API: ok\n");
        return EXIT_SUCCESS;
}
