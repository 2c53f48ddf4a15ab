//! A trial's result in words: a short plain-language conclusion from the
//! fit's numbers, by a template, or by an LLM whose text is accepted only
//! when every number in it is one the fit holds (at the precision shown);
//! otherwise the template's text stands. Pure.

use crate::engine::inference::EffectSummary;
use crate::engine::spec::{Direction, Family};

/// What a conclusion may say: one arm against the comparator.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Facts {
    /// The treatment as the person knows it.
    pub arm: String,
    /// The comparator as the person knows it.
    pub comparator: String,
    /// The outcome's name.
    pub outcome: String,
    /// Its unit (gaussian outcomes).
    pub unit: String,
    /// Which way is better.
    pub direction: Direction,
    /// The family (ratio families speak in ratios and differences).
    pub family: Family,
    /// The MID as the protocol states it.
    pub mid: f64,
    /// The effect's posterior summary.
    pub effect: EffectSummary,
    /// Why the trial stopped, in its rule's words.
    pub stop_reason: String,
}

/// The numbers a conclusion may contain: every figure of the facts, with
/// its magnitude and its percentage, and the labels' own numbers.
pub fn allowed_numbers(f: &Facts) -> Vec<f64> {
    let e = &f.effect;
    let mut v = vec![
        e.mean,
        e.sd,
        e.ci90[0],
        e.ci90[1],
        e.ci95[0],
        e.ci95[1],
        e.p_better,
        e.p_better_by_mid,
        e.p_best,
        f.mid,
        30.0,
        50.0,
        90.0,
        95.0,
    ];
    if let Some(n) = &e.natural {
        v.extend([
            n.ratio_mean,
            n.ratio_median,
            n.ratio_ci90[0],
            n.ratio_ci90[1],
            n.difference_mean,
            n.difference_ci90[0],
            n.difference_ci90[1],
        ]);
    }
    for text in [&f.arm, &f.comparator, &f.outcome, &f.unit, &f.stop_reason] {
        v.extend(numbers_in(text).into_iter().map(|(x, _)| x));
    }
    let mut out = Vec::new();
    for x in v {
        out.extend([x, 100.0 * x]);
    }
    out
}

/// The numbers in a text, each with its number of decimals; a `-` or `−`
/// right before a number makes it negative, a `+` marks it signed too.
pub fn numbers_in(text: &str) -> Vec<(f64, usize)> {
    signed_numbers_in(text)
        .into_iter()
        .map(|(x, d, _)| (x, d))
        .collect()
}

/// [`numbers_in`], with whether each carried an explicit sign.
fn signed_numbers_in(text: &str) -> Vec<(f64, usize, bool)> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_digit() {
            let sign = match i.checked_sub(1).map(|j| chars[j]) {
                Some('-' | '−') => Some(-1.0),
                Some('+') => Some(1.0),
                _ => None,
            };
            let start = i;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            let mut decimals = 0;
            if i + 1 < chars.len() && chars[i] == '.' && chars[i + 1].is_ascii_digit() {
                i += 1;
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                    decimals += 1;
                }
            }
            let s: String = chars[start..i].iter().collect();
            if let Ok(x) = s.parse::<f64>() {
                out.push((sign.unwrap_or(1.0) * x, decimals, sign.is_some()));
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Checks that every number in `text` is one of `allowed` rounded to the
/// decimals shown: a signed number ("-2.1", "+0.6") must match a value with
/// its sign, an unsigned one ("by about 2.1") a value or its magnitude. The
/// error names the first that matches nothing.
pub fn check_numbers(text: &str, allowed: &[f64]) -> Result<(), String> {
    for (x, decimals, signed) in signed_numbers_in(text) {
        let step = 10f64.powi(-(decimals as i32));
        let ok = allowed.iter().any(|&v| {
            let v = if signed { v } else { v.abs() };
            let rounded = (v / step).round() * step;
            (rounded - x).abs() < step * 0.5 + 1e-9
        });
        if !ok {
            return Err(format!("the text says {x}, which the fit does not hold"));
        }
    }
    Ok(())
}

/// The template's conclusion: the effect and its interval in the person's
/// units (for ratio families, the ratio and the difference), and how sure.
pub fn template(f: &Facts) -> String {
    let e = &f.effect;
    let better = e.p_better;
    let verb = match (e.mean > 0.0, f.direction) {
        (true, Direction::Higher) | (false, Direction::Lower) => "improved",
        _ => "worsened",
    };
    let size = match &e.natural {
        Some(n) => format!(
            "{} by about {:.1} {} (90% interval {:.1} to {:.1}; {} {:.2})",
            f.outcome,
            n.difference_mean.abs(),
            n.difference_unit,
            n.difference_ci90[0],
            n.difference_ci90[1],
            n.ratio_name,
            n.ratio_median
        ),
        None => format!(
            "{} by about {:.2} {} (90% interval {:.2} to {:.2})",
            f.outcome,
            e.mean.abs(),
            f.unit,
            e.ci90[0],
            e.ci90[1]
        ),
    };
    let sure = if better >= 0.95 {
        "very likely"
    } else if better >= 0.8 {
        "likely"
    } else if better > 0.2 {
        "not clear whether"
    } else {
        "unlikely"
    };
    format!(
        "Compared with {}, {} {verb} your {size}. It is {sure} that {} helps you: a {:.0}% probability it helps at all, {:.0}% that it helps by at least the smallest change that matters ({}). The trial stopped because {}.",
        f.comparator,
        f.arm,
        f.arm,
        100.0 * better,
        100.0 * e.p_better_by_mid,
        f.mid,
        f.stop_reason
    )
}

/// The conclusion to show: the LLM's text when every number in it checks,
/// else the template's, with the reason it was refused.
pub fn choose(f: &Facts, llm_text: Option<&str>) -> (String, Option<String>) {
    let fallback = template(f);
    match llm_text.map(str::trim) {
        None => (fallback, None),
        Some("") => (fallback, Some("the model's text was empty".into())),
        Some(t) if t.chars().count() > 1_200 => {
            (fallback, Some("the model's text was too long".into()))
        }
        Some(t) if t.chars().any(|c| c.is_control() || "<>`[]".contains(c)) => (
            fallback,
            Some("the model's text holds markup or control characters".into()),
        ),
        Some(t) => match check_numbers(t, &allowed_numbers(f)) {
            Ok(()) => (t.to_string(), None),
            Err(why) => (fallback, Some(why)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            arm: "Magnesium 600 mg".into(),
            comparator: "placebo".into(),
            outcome: "migraine days".into(),
            unit: "days".into(),
            direction: Direction::Lower,
            family: Family::Gaussian,
            mid: 1.5,
            effect: EffectSummary {
                arm: "magnesium".into(),
                mean: -2.137,
                sd: 0.8,
                ci50: [-2.6, -1.6],
                ci90: [-3.4, -0.6],
                ci95: [-3.7, -0.4],
                p_better_by_mid: 0.78,
                p_better: 0.991,
                p_best: 0.991,
                natural: None,
            },
            stop_reason: "P(better by MID) reached 0.95".into(),
        }
    }

    #[test]
    fn the_template_says_what_the_fit_says_and_passes_its_own_check() {
        let f = facts();
        let t = template(&f);
        assert!(
            t.contains("improved") && t.contains("2.14") && t.contains("99%"),
            "{t}"
        );
        assert!(check_numbers(&t, &allowed_numbers(&f)).is_ok(), "{t}");
    }

    #[test]
    fn a_text_with_a_number_the_fit_does_not_hold_is_refused() {
        let f = facts();
        let good = "Magnesium 600 mg lowered your migraine days by about 2.1 (90% interval -3.4 to -0.6); 99% probability it helps.";
        assert_eq!(choose(&f, Some(good)).0, good);
        let bad = "Magnesium 600 mg lowered your migraine days by about 5 per month; 99% sure.";
        let (text, why) = choose(&f, Some(bad));
        assert_eq!(text, template(&f));
        assert!(why.unwrap().contains('5'));
        assert_eq!(
            numbers_in("a 1.25-fold, 30 days, 0.05"),
            vec![(1.25, 2), (30.0, 0), (0.05, 2)]
        );
        // A sign the fit does not have is refused: the days fell, not rose.
        let flipped =
            "Magnesium 600 mg changed your migraine days by +2.1 (90% interval +0.6 to +3.4).";
        assert!(choose(&f, Some(flipped)).1.is_some());
        assert!(choose(&f, Some("See <a href=x>this</a>.")).1.is_some());
    }
}
