//! `vsound generate man DIR`: the manual pages, from the clap definitions
//! (`clap_mangen`), with hand-written FILES, ENVIRONMENT and SEE ALSO
//! sections on `vsound(1)`.

use std::io::Write;
use std::path::Path;

/// Sections appended to `vsound.1` (roff).
const VSOUND_EXTRA: &str = r#".SH FILES
.TP
\fI/etc/vsound/NAME.toml\fR
The configuration of \fBvsound \-\-instance\fR \fINAME\fR (the service
\fBvsound@NAME.service\fR).
.TP
\fI/etc/vsound/default.toml\fR
The configuration of an instance that has no file of its own; without it,
the embedded default (\fBvsound print\-default\-config\fR).
.TP
\fI/run/vsound/NAME.sock\fR, \fI/run/vsound/NAME\-api.sock\fR
The vhost\-user socket (\fBvsound@NAME.socket\fR) and the management API
(\fBvsound\-api@NAME.socket\fR) of the service.
.TP
\fI/usr/share/doc/vsound/examples/\fR
Example configurations.
.SH ENVIRONMENT
.TP
\fBRUST_LOG\fR
Log level and filters (default \fBinfo\fR), e.g. \fBRUST_LOG=debug\fR.
.TP
\fBLISTEN_PID\fR, \fBLISTEN_FDS\fR, \fBLISTEN_FDNAMES\fR
systemd socket activation: the passed socket named \fBvhost\-user\fR (or the
first unnamed one) is the vhost\-user socket, the one named \fBapi\fR the
management API. \fB\-\-socket\fR and \fB\-\-socket\-fd\fR take precedence.
.TP
\fBVSOUND_CONFIG_DIR\fR
Replaces \fI/etc/vsound\fR for \fB\-\-instance\fR (for tests and packagers).
.SH EXIT STATUS
0 after a clean stop (SIGTERM, SIGINT), 1 on an error, 159 when the seccomp
sandbox ended the process on a forbidden system call.
.SH SEE ALSO
\fBvsound\-check\-config\fR(1), \fBvsound\-ctl\fR(1), \fBvsound\-pad\fR(1),
\fBsystemd.socket\fR(5), \fBsystemd\-socket\-activate\fR(1)
"#;

/// Writes `vsound.1` and one page per visible subcommand, recursively
/// (`vsound-ctl.1`, `vsound-ctl-status.1`, ...), into `dir`.
pub fn write_all(cmd: clap::Command, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    write_page(&cmd, dir, true)
}

fn write_page(cmd: &clap::Command, dir: &Path, top: bool) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_page(sub, dir, false)?;
    }
    let man = clap_mangen::Man::new(cmd.clone()).manual("vsound manual");
    let mut page = Vec::new();
    man.render(&mut page)?;
    if top {
        page.extend_from_slice(VSOUND_EXTRA.as_bytes());
    }
    let path = dir.join(man.get_filename());
    let mut f = std::fs::File::create(&path)?;
    f.write_all(&page)?;
    f.flush()
}
