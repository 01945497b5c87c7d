//! `size`: the release binary's size.

use crate::Args;
use crate::harness::MIB;
use crate::report::Report;

pub(crate) fn size_row(a: &Args, r: &mut Report) {
    let bytes = std::fs::metadata(&a.attache).unwrap().len();
    println!();
    println!("binary:");
    r.figure("attache_binary_bytes", bytes);
    r.target(
        &format!("release binary size ({bytes} bytes)"),
        bytes as f64 / MIB,
        12.0,
        "MiB",
    );
}
