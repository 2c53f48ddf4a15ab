//! The kernels compiled for the host: `build.rs` compiles `kernels/*.cu`
//! as C (see `kernels/common.h`) and this module calls them, one "thread"
//! after another. The tests check the kernels' arithmetic against the CPU
//! engine on every machine, with or without a GPU; `nof1d doctor` runs the
//! same check.

use crate::engine::gpu::pack::{OUT_LEN, Packed, decode, ln_2pi};
use crate::engine::inference::{Eval, Theta};

unsafe extern "C" {
    fn filter_batch_host(
        count: i64,
        meta: *const i32,
        ints: *const i32,
        reals: *const f64,
        item_series: *const i32,
        thetas: *const f64,
        items: i64,
        ln_2pi: f64,
        out: *mut f64,
    );
}

/// `filter_batch` of `kernels/filter.cu` on the host for `items`, each a
/// packed series' index and a point; `None` where the kernel could not
/// evaluate. Items naming a series that is not packed are `None` too.
pub fn filter_batch(packed: &Packed, items: &[(u32, Theta)]) -> Vec<Option<Eval>> {
    let valid: Vec<bool> = items
        .iter()
        .map(|(s, _)| (*s as usize) < packed.len())
        .collect();
    // Invalid items are sent as series 0 (the kernel reads every item's
    // header) and dropped afterwards; with nothing packed nothing runs.
    if packed.is_empty() || items.is_empty() {
        return vec![None; items.len()];
    }
    let series: Vec<i32> = items
        .iter()
        .zip(&valid)
        .map(|((s, _), ok)| if *ok { *s as i32 } else { 0 })
        .collect();
    let thetas: Vec<f64> = items.iter().flat_map(|(_, t)| *t).collect();
    let mut out = vec![f64::NAN; OUT_LEN * items.len()];
    // SAFETY: every pointer is to a live slice of the length the kernel
    // reads: `Packed::push` wrote each header's offsets into its own arrays,
    // every item names a packed series, `thetas` holds 4 doubles an item and
    // `out` OUT_LEN; the kernel writes only `out`.
    unsafe {
        filter_batch_host(
            items.len() as i64,
            packed.meta.as_ptr(),
            packed.ints.as_ptr(),
            packed.reals.as_ptr(),
            series.as_ptr(),
            thetas.as_ptr(),
            items.len() as i64,
            ln_2pi(),
            out.as_mut_ptr(),
        );
    }
    items
        .iter()
        .enumerate()
        .map(|(i, (s, theta))| {
            let p = packed.static_count(*s)?;
            decode(&out[i * OUT_LEN..(i + 1) * OUT_LEN], theta, p)
        })
        .collect()
}
