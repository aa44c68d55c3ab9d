/* SPDX-License-Identifier: MIT */
/* A GSource that drives an sd-bus connection from a GLib main context. */
#pragma once

#include <glib.h>
#include <systemd/sd-bus.h>

/* Called from dispatch when sd_bus_process() fails (the connection is gone). */
typedef void (*glib_bus_error_t)(int error, void *userdata);

/* A new source for bus, not yet attached; the source holds a reference on bus. */
GSource *glib_bus_source_new(sd_bus *bus, glib_bus_error_t on_error, void *userdata);
