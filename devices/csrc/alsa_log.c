/* alsa-lib reports its errors through a printf-style, variadic handler
 * (stderr by default). Rust cannot define a variadic function on the stable
 * toolchain, so this shim formats the message and hands the text to the
 * daemon's logging (vsound_alsa_log, in devices/src/alsa_log.rs). */
#include <stdarg.h>
#include <stdio.h>
#include <alsa/asoundlib.h>

void vsound_alsa_log(const char *file, int line, const char *function, int err,
                     const char *message);

static void vsound_alsa_handler(const char *file, int line, const char *function, int err,
                                const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    vsound_alsa_log(file, line, function, err, buf);
}

int vsound_alsa_install_log(void)
{
    return snd_lib_error_set_handler(vsound_alsa_handler);
}
