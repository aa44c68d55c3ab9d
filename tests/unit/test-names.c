/* SPDX-License-Identifier: MIT */
/* Unit tests of the names module: app names, bus names, paths and match rules. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <glib.h>

#include "ipchannel.h"
#include "names.h"

START_TEST(test_valid_app_names_are_accepted) {
        const char *ok[] = { "a", "demo", "My_App2", "_x", "A1_b2_C3" };

        for (size_t i = 0; i < G_N_ELEMENTS(ok); i++)
                ck_assert_int_eq(names_check_app(ok[i], NULL), 0);
}
END_TEST

START_TEST(test_invalid_app_names_are_refused_with_a_reason) {
        struct {
                const char *app;
                const char *reason_part;
        } bad[] = {
                { "", "empty" },
                { "my-app", "only letters" },
                { "my.app", "only letters" },
                { "2fast", "starts with a digit" },
                { "caf\xc3\xa9", "only letters" },
                { "sp ace", "only letters" },
        };
        const char *reason = NULL;

        for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
                reason = NULL;
                ck_assert_int_eq(names_check_app(bad[i].app, &reason), -EINVAL);
                ck_assert_ptr_nonnull(reason);
                ck_assert_msg(strstr(reason, bad[i].reason_part), "reason for \"%s\": %s", bad[i].app,
                              reason);
        }
        ck_assert_int_eq(names_check_app(NULL, &reason), -EINVAL);

        char long_name[IPCHANNEL_APP_NAME_MAX + 2];
        memset(long_name, 'a', sizeof(long_name) - 1);
        long_name[sizeof(long_name) - 1] = '\0';
        ck_assert_int_eq(names_check_app(long_name, &reason), -EINVAL);
        ck_assert_ptr_nonnull(strstr(reason, "longer"));
        long_name[IPCHANNEL_APP_NAME_MAX] = '\0';
        ck_assert_int_eq(names_check_app(long_name, NULL), 0);
}
END_TEST

START_TEST(test_ipchannel_new_refuses_invalid_app_names) {
        ipchannel *ch = NULL;
        const char *reason = NULL;

        ck_assert_int_eq(ipchannel_new(&ch, "my-app"), -EINVAL);
        ck_assert_ptr_null(ch);
        ck_assert_int_eq(ipchannel_check_app_name("my-app", &reason), -EINVAL);
        ck_assert_ptr_nonnull(reason);
        ck_assert_int_eq(ipchannel_new(&ch, "my_app"), 0);
        ck_assert_str_eq(ipchannel_get_app(ch), "my_app");
        ipchannel_unref(ch);
}
END_TEST

START_TEST(test_prefixes) {
        ck_assert_int_eq(names_check_prefix("org.ipchannel", NULL), 0);
        ck_assert_int_eq(names_check_prefix("com.example.x_y", NULL), 0);
        ck_assert_int_eq(names_check_prefix("single", NULL), 0);
        ck_assert_int_eq(names_check_prefix("", NULL), -EINVAL);
        ck_assert_int_eq(names_check_prefix("org..x", NULL), -EINVAL);
        ck_assert_int_eq(names_check_prefix("org.x.", NULL), -EINVAL);
        ck_assert_int_eq(names_check_prefix(".org", NULL), -EINVAL);
        ck_assert_int_eq(names_check_prefix("org.1x", NULL), -EINVAL);
        ck_assert_int_eq(names_check_prefix("org.my-x", NULL), -EINVAL);
}
END_TEST

START_TEST(test_bus_names_and_paths) {
        g_autofree char *peer = names_peer("org.ipchannel", "demo", 12);
        g_autofree char *locks = names_locks("org.ipchannel", "demo");
        g_autofree char *path = names_path("org.ipchannel", "demo");
        g_autofree char *lpath = names_locks_path("com.example.x", "demo");
        g_autofree char *ns = names_peer_namespace("org.ipchannel", "demo");

        ck_assert_str_eq(peer, "org.ipchannel.demo.Peer12");
        ck_assert_str_eq(locks, "org.ipchannel.demo.Locks");
        ck_assert_str_eq(path, "/org/ipchannel/demo");
        ck_assert_str_eq(lpath, "/com/example/x/demo/Locks");
        ck_assert_str_eq(ns, "org.ipchannel.demo");
}
END_TEST

START_TEST(test_peer_names_parse_back_to_ids) {
        const char *p = "org.ipchannel", *a = "demo";

        ck_assert_uint_eq(names_parse_peer(p, a, "org.ipchannel.demo.Peer1"), 1);
        ck_assert_uint_eq(names_parse_peer(p, a, "org.ipchannel.demo.Peer4294967294"), 4294967294u);
        ck_assert_uint_eq(names_parse_peer(p, a, "org.ipchannel.demo.Peer4294967295"), 0);
        ck_assert_uint_eq(names_parse_peer(p, a, "org.ipchannel.demo.Peer99999999999"), 0);
        ck_assert_uint_eq(names_parse_peer(p, a, "org.ipchannel.demo.Peer0"), 0);
        ck_assert_uint_eq(names_parse_peer(p, a, "org.ipchannel.demo.Peer01"), 0);
        ck_assert_uint_eq(names_parse_peer(p, a, "org.ipchannel.demo.Peer"), 0);
        ck_assert_uint_eq(names_parse_peer(p, a, "org.ipchannel.demo.Peer1x"), 0);
        ck_assert_uint_eq(names_parse_peer(p, a, "org.ipchannel.demo.Locks"), 0);
        ck_assert_uint_eq(names_parse_peer(p, a, "org.ipchannel.demo2.Peer1"), 0);
        ck_assert_uint_eq(names_parse_peer(p, a, "org.ipchannel.dem.Peer1"), 0);
        ck_assert_uint_eq(names_parse_peer(p, a, ":1.42"), 0);
}
END_TEST

START_TEST(test_event_names) {
        const char *reason;
        char big[IPCHANNEL_EVENT_NAME_MAX + 2];

        ck_assert_int_eq(names_check_event("message", NULL), 0);
        ck_assert_int_eq(names_check_event("caf\xc3\xa9 \xe2\x98\x95", NULL), 0);
        ck_assert_int_eq(names_check_event("", &reason), -EINVAL);
        ck_assert_int_eq(names_check_event(NULL, &reason), -EINVAL);
        ck_assert_int_eq(names_check_event("bad\xff", &reason), -EINVAL);
        ck_assert_ptr_nonnull(strstr(reason, "UTF-8"));
        /* Noncharacters: valid UTF-8, but sd-bus refuses them in a message (a queued send
         * would fail only when it goes): refused when the name is given. Their neighbours
         * pass. */
        const char *const noncharacters[] = { "a\xef\xb7\x90", "\xef\xb7\xaf", "\xef\xbf\xbe",
                                              "b\xef\xbf\xbf!", "\xf0\x9f\xbf\xbe", "\xf4\x8f\xbf\xbf" };
        for (size_t i = 0; i < G_N_ELEMENTS(noncharacters); i++) {
                reason = NULL;
                ck_assert_int_eq(names_check_event(noncharacters[i], &reason), -EINVAL);
                ck_assert_ptr_nonnull(strstr(reason, "noncharacter"));
        }
        ck_assert_int_eq(names_check_event("\xef\xb7\x8f\xef\xb7\xb0\xef\xbf\xbd", NULL), 0);
        ck_assert_int_eq(names_check_event("\xf0\x9f\xbf\xbd \xf0\x9f\x98\x80", NULL), 0);
        memset(big, 'e', sizeof(big) - 1);
        big[sizeof(big) - 1] = '\0';
        ck_assert_int_eq(names_check_event(big, &reason), -EINVAL);
        big[IPCHANNEL_EVENT_NAME_MAX] = '\0';
        ck_assert_int_eq(names_check_event(big, NULL), 0);

        ck_assert(names_event_is_local("connect"));
        ck_assert(names_event_is_local("disconnect"));
        ck_assert(names_event_is_local("error"));
        ck_assert(names_event_is_local("peer-join"));
        ck_assert(names_event_is_local("peer-leave"));
        ck_assert(!names_event_is_local("message"));
        ck_assert(!names_event_is_local("connected"));
}
END_TEST

START_TEST(test_broadcast_match_rules) {
        g_autofree char *m = names_broadcast_match("/org/ipchannel/demo", "news");
        g_autofree char *all = names_broadcast_match_all("/org/ipchannel/demo");

        ck_assert_str_eq(m, "type='signal',interface='org.ipchannel.Peer1',path='/org/ipchannel/demo',"
                            "arg0='news'");
        ck_assert_str_eq(all, "type='signal',interface='org.ipchannel.Peer1',path='/org/ipchannel/demo'");
        /* Characters the two match-rule parsers quote differently get the catch-all rule. */
        ck_assert_ptr_null(names_broadcast_match("/x", "it's"));
        ck_assert_ptr_null(names_broadcast_match("/x", "back\\slash"));
        ck_assert_ptr_null(names_broadcast_match("/x", "a,b"));
}
END_TEST

static Suite *names_suite(void) {
        Suite *s = suite_create("names");
        TCase *tc = tcase_create("names");

        tcase_add_test(tc, test_valid_app_names_are_accepted);
        tcase_add_test(tc, test_invalid_app_names_are_refused_with_a_reason);
        tcase_add_test(tc, test_ipchannel_new_refuses_invalid_app_names);
        tcase_add_test(tc, test_prefixes);
        tcase_add_test(tc, test_bus_names_and_paths);
        tcase_add_test(tc, test_peer_names_parse_back_to_ids);
        tcase_add_test(tc, test_event_names);
        tcase_add_test(tc, test_broadcast_match_rules);
        suite_add_tcase(s, tc);
        return s;
}

int main(void) {
        SRunner *sr = srunner_create(names_suite());
        int failed;

        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
