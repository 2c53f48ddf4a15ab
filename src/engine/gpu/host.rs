//! The kernels compiled for the host: `build.rs` compiles `kernels/*.cu`
//! as C (see `kernels/common.h`) and this module calls them, one "thread"
//! after another. The tests check the kernels' arithmetic against the CPU
//! engine on every machine, with or without a GPU; `nof1d doctor` runs the
//! same check.

use crate::engine::gpu::pack::{OUT_LEN, Packed, decode_all, ln_2pi};
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
            packed.meta().as_ptr(),
            packed.ints().as_ptr(),
            packed.reals().as_ptr(),
            series.as_ptr(),
            thetas.as_ptr(),
            items.len() as i64,
            ln_2pi(),
            out.as_mut_ptr(),
        );
    }
    decode_all(packed, items, &out)
}

unsafe extern "C" {
    fn scan_setup_host(
        count: i64,
        n: i64,
        batch: i64,
        thetas: *const f64,
        gap: *const f64,
        step_start: *const i32,
        piece_len: *const f64,
        piece_arm: *const i32,
        p: i32,
        mob: *mut f64,
        wmap: *mut f64,
    );
    fn scan_chunks_host(
        count: i64,
        n: i64,
        batch: i64,
        chunk: i64,
        kind: i32,
        width: i32,
        elems: *const f64,
        totals: *mut f64,
    );
    fn scan_chunk_prefix_host(
        count: i64,
        chunks: i64,
        batch: i64,
        kind: i32,
        width: i32,
        totals: *mut f64,
    );
    fn scan_apply_host(
        count: i64,
        n: i64,
        batch: i64,
        chunk: i64,
        kind: i32,
        width: i32,
        prefixes: *const f64,
        elems: *mut f64,
    );
    fn scan_gains_host(
        count: i64,
        n: i64,
        batch: i64,
        thetas: *const f64,
        gap: *const f64,
        y: *const f64,
        p: i32,
        effect_arm: *const i32,
        mob_prefix: *const f64,
        w_prefix: *const f64,
        fr: *mut f64,
        means: *mut f64,
    );
    fn scan_terms_host(
        count: i64,
        n: i64,
        batch: i64,
        y: *const f64,
        p: i32,
        effect_arm: *const i32,
        w_prefix: *const f64,
        means_prefix: *const f64,
        fr: *const f64,
        terms: *mut f64,
    );
    fn sum_chunks_host(
        count: i64,
        n: i64,
        batch: i64,
        chunk: i64,
        width: i32,
        terms: *const f64,
        partial: *mut f64,
    );
    fn sum_points_host(
        count: i64,
        chunks: i64,
        batch: i64,
        width: i32,
        partial: *const f64,
        totals: *mut f64,
    );
}

/// Panics unless `buffer` holds `len` entries (`None`: the product of the
/// sizes overflowed): the wrappers check every length a kernel will index
/// before handing it a pointer.
fn holds<T>(buffer: &[T], len: Option<i64>, what: &str) {
    let len = len.unwrap_or(i64::MAX);
    assert!(
        len >= 0 && buffer.len() as i64 >= len,
        "{what}: {} entries, the kernel reads {len}",
        buffer.len()
    );
}

/// `a * b * c` unless it overflows.
fn product(a: i64, b: i64, c: i64) -> Option<i64> {
    a.checked_mul(b)?.checked_mul(c)
}

/// `scan_setup` of `kernels/scan.cu` on the host.
#[allow(clippy::too_many_arguments)]
pub fn scan_setup(
    n: i64,
    batch: i64,
    thetas: &[f64],
    gap: &[f64],
    step_start: &[i32],
    piece_len: &[f64],
    piece_arm: &[i32],
    p: i32,
    mob: &mut [f64],
    wmap: &mut [f64],
) {
    let elems = n.checked_mul(batch).unwrap_or(i64::MAX);
    holds(thetas, product(4, batch, 1), "thetas");
    holds(gap, Some(n), "gap");
    holds(step_start, n.checked_add(1), "step_start");
    // The kernel walks step_start[i]..step_start[i + 1] for every i.
    assert!(
        step_start.first().is_some_and(|&s| s >= 0) && step_start.windows(2).all(|w| w[0] <= w[1]),
        "step_start must start at 0 or more and never decrease"
    );
    let pieces = step_start.get(n as usize).copied().unwrap_or(0) as i64;
    holds(piece_len, Some(pieces), "piece_len");
    holds(piece_arm, Some(pieces), "piece_arm");
    assert!(piece_arm.iter().all(|&a| a >= 0 && a < p) && (1..=MAX_P).contains(&p));
    holds(mob, product(4, elems, 1), "mob");
    holds(wmap, product(1 + i64::from(p), elems, 1), "wmap");
    // SAFETY: every length the kernel indexes was checked above.
    unsafe {
        scan_setup_host(
            elems,
            n,
            batch,
            thetas.as_ptr(),
            gap.as_ptr(),
            step_start.as_ptr(),
            piece_len.as_ptr(),
            piece_arm.as_ptr(),
            p,
            mob.as_mut_ptr(),
            wmap.as_mut_ptr(),
        )
    }
}

/// The most static coefficients a scan carries (`SCAN_MAX_ARMS`).
const MAX_P: i32 = 6;

/// Doubles an element of a scan of `kind` (0 Möbius, 1 affine of `width`
/// columns), checked within what the kernels' `double[8]` carries hold.
fn element_len(kind: i32, width: i32) -> i64 {
    let len = if kind == 0 { 4 } else { 1 + i64::from(width) };
    assert!(
        (kind == 0 || kind == 1) && (1..=8).contains(&len),
        "scan element of {len}"
    );
    len
}

/// `scan_chunks` of `kernels/scan.cu` on the host.
#[allow(clippy::too_many_arguments)]
pub fn scan_chunks(
    n: i64,
    batch: i64,
    chunk: i64,
    kind: i32,
    width: i32,
    elems: &[f64],
    totals: &mut [f64],
) {
    let len = element_len(kind, width);
    assert!(chunk > 0);
    let chunks = (n + chunk - 1) / chunk;
    holds(elems, product(len, n, batch), "elems");
    holds(totals, product(len, chunks, batch), "totals");
    // SAFETY: both lengths the kernel indexes were checked above.
    unsafe {
        scan_chunks_host(
            chunks * batch,
            n,
            batch,
            chunk,
            kind,
            width,
            elems.as_ptr(),
            totals.as_mut_ptr(),
        )
    }
}

/// `scan_chunk_prefix` on the host.
pub fn scan_chunk_prefix(chunks: i64, batch: i64, kind: i32, width: i32, totals: &mut [f64]) {
    let len = element_len(kind, width);
    holds(totals, product(len, chunks, batch), "totals");
    // SAFETY: `totals` holds the chunks' elements of every point.
    unsafe { scan_chunk_prefix_host(batch, chunks, batch, kind, width, totals.as_mut_ptr()) }
}

/// `scan_apply` on the host.
#[allow(clippy::too_many_arguments)]
pub fn scan_apply(
    n: i64,
    batch: i64,
    chunk: i64,
    kind: i32,
    width: i32,
    prefixes: &[f64],
    elems: &mut [f64],
) {
    let len = element_len(kind, width);
    assert!(chunk > 0);
    let chunks = (n + chunk - 1) / chunk;
    holds(prefixes, product(len, chunks, batch), "prefixes");
    holds(elems, product(len, n, batch), "elems");
    // SAFETY: both lengths the kernel indexes were checked above.
    unsafe {
        scan_apply_host(
            chunks * batch,
            n,
            batch,
            chunk,
            kind,
            width,
            prefixes.as_ptr(),
            elems.as_mut_ptr(),
        )
    }
}

/// `scan_gains` on the host.
#[allow(clippy::too_many_arguments)]
pub fn scan_gains(
    n: i64,
    batch: i64,
    thetas: &[f64],
    gap: &[f64],
    y: &[f64],
    p: i32,
    effect_arm: &[i32],
    mob_prefix: &[f64],
    w_prefix: &[f64],
    fr: &mut [f64],
    means: &mut [f64],
) {
    let elems = n.checked_mul(batch).unwrap_or(i64::MAX);
    holds(thetas, product(4, batch, 1), "thetas");
    holds(gap, Some(n), "gap");
    holds(y, Some(n), "y");
    holds(effect_arm, Some(i64::from(MAX_P)), "effect_arm");
    assert!(effect_arm.iter().all(|&a| a >= 0 && a < p) && (1..=MAX_P).contains(&p));
    holds(mob_prefix, product(4, elems, 1), "mob_prefix");
    holds(w_prefix, product(1 + i64::from(p), elems, 1), "w_prefix");
    holds(fr, product(2, elems, 1), "fr");
    holds(means, product(2 + i64::from(p), elems, 1), "means");
    // SAFETY: every length the kernel indexes was checked above.
    unsafe {
        scan_gains_host(
            elems,
            n,
            batch,
            thetas.as_ptr(),
            gap.as_ptr(),
            y.as_ptr(),
            p,
            effect_arm.as_ptr(),
            mob_prefix.as_ptr(),
            w_prefix.as_ptr(),
            fr.as_mut_ptr(),
            means.as_mut_ptr(),
        )
    }
}

/// `scan_terms` on the host.
#[allow(clippy::too_many_arguments)]
pub fn scan_terms(
    n: i64,
    batch: i64,
    y: &[f64],
    p: i32,
    effect_arm: &[i32],
    w_prefix: &[f64],
    means_prefix: &[f64],
    fr: &[f64],
    terms: &mut [f64],
) {
    let elems = n.checked_mul(batch).unwrap_or(i64::MAX);
    let p64 = i64::from(p);
    holds(y, Some(n), "y");
    holds(effect_arm, Some(i64::from(MAX_P)), "effect_arm");
    assert!(effect_arm.iter().all(|&a| a >= 0 && a < p) && (1..=MAX_P).contains(&p));
    holds(w_prefix, product(1 + p64, elems, 1), "w_prefix");
    holds(means_prefix, product(2 + p64, elems, 1), "means_prefix");
    holds(fr, product(2, elems, 1), "fr");
    holds(
        terms,
        product(2 + p64 + p64 * (p64 + 1) / 2, elems, 1),
        "terms",
    );
    // SAFETY: every length the kernel indexes was checked above.
    unsafe {
        scan_terms_host(
            elems,
            n,
            batch,
            y.as_ptr(),
            p,
            effect_arm.as_ptr(),
            w_prefix.as_ptr(),
            means_prefix.as_ptr(),
            fr.as_ptr(),
            terms.as_mut_ptr(),
        )
    }
}

/// `sum_chunks` on the host.
pub fn sum_chunks(n: i64, batch: i64, chunk: i64, width: i32, terms: &[f64], partial: &mut [f64]) {
    assert!(chunk > 0 && width > 0);
    let chunks = (n + chunk - 1) / chunk;
    holds(terms, product(i64::from(width), n, batch), "terms");
    holds(partial, product(i64::from(width), chunks, batch), "partial");
    // SAFETY: both lengths the kernel indexes were checked above.
    unsafe {
        sum_chunks_host(
            chunks * batch,
            n,
            batch,
            chunk,
            width,
            terms.as_ptr(),
            partial.as_mut_ptr(),
        )
    }
}

/// `sum_points` on the host.
pub fn sum_points(chunks: i64, batch: i64, width: i32, partial: &[f64], totals: &mut [f64]) {
    assert!(width > 0);
    holds(partial, product(i64::from(width), chunks, batch), "partial");
    holds(totals, product(i64::from(width), batch, 1), "totals");
    // SAFETY: both lengths the kernel indexes were checked above.
    unsafe {
        sum_points_host(
            batch,
            chunks,
            batch,
            width,
            partial.as_ptr(),
            totals.as_mut_ptr(),
        )
    }
}
