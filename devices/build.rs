//! Builds the C shim that routes alsa-lib's error messages into the
//! daemon's logging (see `csrc/alsa_log.c`).

fn main() {
    println!("cargo:rerun-if-changed=csrc/alsa_log.c");
    cc::Build::new()
        .file("csrc/alsa_log.c")
        .warnings(true)
        .compile("vsound_alsa_log");
    // The shim calls into libasound, which alsa-sys links already.
}
