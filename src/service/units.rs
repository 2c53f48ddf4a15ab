//! Units a person's files and devices write, and how a value in one converts
//! to another of the same quantity (pounds to kilograms, hours to minutes,
//! °F to °C). Pure. A stream keeps the unit it was first stored in; values
//! arriving in another unit of the same quantity are converted to it, and a
//! unit of another quantity is refused rather than mixed in.

/// The quantities whose units convert into one another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quantity {
    Mass,
    Duration,
    Energy,
    Length,
    Temperature,
    Rate,
    Fraction,
    Volume,
}

/// `(spellings, quantity, factor to the quantity's base, offset)`: a value
/// `x` in this unit is `x * factor + offset` in the base unit.
type Entry = (&'static [&'static str], Quantity, f64, f64);

const UNITS: &[Entry] = &[
    (
        &["kg", "kilogram", "kilograms", "kgs"],
        Quantity::Mass,
        1.0,
        0.0,
    ),
    (&["g", "gram", "grams"], Quantity::Mass, 0.001, 0.0),
    (
        &["mg", "milligram", "milligrams"],
        Quantity::Mass,
        1e-6,
        0.0,
    ),
    (
        &["lb", "lbs", "pound", "pounds"],
        Quantity::Mass,
        0.453_592_37,
        0.0,
    ),
    (&["st", "stone"], Quantity::Mass, 6.350_293_18, 0.0),
    (
        &["oz", "ounce", "ounces"],
        Quantity::Mass,
        0.028_349_523_125,
        0.0,
    ),
    (
        &["ms", "millisecond", "milliseconds"],
        Quantity::Duration,
        0.001,
        0.0,
    ),
    (
        &["s", "sec", "secs", "second", "seconds"],
        Quantity::Duration,
        1.0,
        0.0,
    ),
    (
        &["min", "mins", "minute", "minutes"],
        Quantity::Duration,
        60.0,
        0.0,
    ),
    (
        &["h", "hr", "hrs", "hour", "hours"],
        Quantity::Duration,
        3600.0,
        0.0,
    ),
    (&["kcal", "cal", "kilocalories"], Quantity::Energy, 1.0, 0.0),
    (&["kj", "kilojoules"], Quantity::Energy, 1.0 / 4.184, 0.0),
    (
        &["m", "metre", "metres", "meter", "meters"],
        Quantity::Length,
        1.0,
        0.0,
    ),
    (
        &["km", "kilometre", "kilometres", "kilometer", "kilometers"],
        Quantity::Length,
        1000.0,
        0.0,
    ),
    (
        &[
            "cm",
            "centimetre",
            "centimetres",
            "centimeter",
            "centimeters",
        ],
        Quantity::Length,
        0.01,
        0.0,
    ),
    (&["mi", "mile", "miles"], Quantity::Length, 1609.344, 0.0),
    (&["ft", "foot", "feet"], Quantity::Length, 0.3048, 0.0),
    (&["in", "inch", "inches"], Quantity::Length, 0.0254, 0.0),
    (
        &["degc", "°c", "c", "celsius"],
        Quantity::Temperature,
        1.0,
        0.0,
    ),
    (
        &["degf", "°f", "f", "fahrenheit"],
        Quantity::Temperature,
        5.0 / 9.0,
        -32.0 * 5.0 / 9.0,
    ),
    (
        &["bpm", "count/min", "beats/min", "/min", "rpm"],
        Quantity::Rate,
        1.0,
        0.0,
    ),
    (&["count/s", "/s"], Quantity::Rate, 60.0, 0.0),
    (&["%", "percent", "pct"], Quantity::Fraction, 0.01, 0.0),
    (&["fraction", "ratio"], Quantity::Fraction, 1.0, 0.0),
    (
        &[
            "ml",
            "millilitre",
            "milliliter",
            "millilitres",
            "milliliters",
        ],
        Quantity::Volume,
        0.001,
        0.0,
    ),
    (
        &["l", "litre", "liter", "litres", "liters"],
        Quantity::Volume,
        1.0,
        0.0,
    ),
    (
        &["fl_oz_us", "fl oz", "floz"],
        Quantity::Volume,
        0.029_573_529_562_5,
        0.0,
    ),
];

fn entry(unit: &str) -> Option<&'static Entry> {
    let unit = unit.trim().to_ascii_lowercase();
    UNITS
        .iter()
        .find(|(names, ..)| names.iter().any(|n| n.to_ascii_lowercase() == unit))
}

/// Why a value cannot be put in a stream's unit.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "a value in {from:?} cannot be stored in a stream kept in {to:?}: they measure different things (or nof1d does not know one of them); give the column the stream's unit, or another stream"
)]
pub struct UnitMismatch {
    /// The unit the value came in.
    pub from: String,
    /// The stream's unit.
    pub to: String,
}

/// A conversion from one unit to another: `y = x * scale + offset`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conversion {
    scale: f64,
    offset: f64,
}

impl Conversion {
    /// The identity.
    pub const SAME: Conversion = Conversion {
        scale: 1.0,
        offset: 0.0,
    };

    /// How a value in `from` becomes one in `to`: the identity when both are
    /// spelled alike (case-insensitively) or name the same unit, a factor
    /// (and for temperatures an offset) between known units of one
    /// quantity, and an error otherwise: a stream never mixes units.
    pub fn between(from: &str, to: &str) -> Result<Conversion, UnitMismatch> {
        if from.trim().eq_ignore_ascii_case(to.trim()) {
            return Ok(Conversion::SAME);
        }
        let mismatch = || UnitMismatch {
            from: from.to_string(),
            to: to.to_string(),
        };
        let (_, q_from, f_from, o_from) = entry(from).ok_or_else(mismatch)?;
        let (_, q_to, f_to, o_to) = entry(to).ok_or_else(mismatch)?;
        if q_from != q_to {
            return Err(mismatch());
        }
        // x (from) → base: x·f_from + o_from; base → to: (b − o_to) / f_to.
        Ok(Conversion {
            scale: f_from / f_to,
            offset: (o_from - o_to) / f_to,
        })
    }

    /// The value in the target unit.
    pub fn apply(&self, value: f64) -> f64 {
        value * self.scale + self.offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn units_of_one_quantity_convert_both_ways() {
        let lb = Conversion::between("lb", "kg").unwrap();
        assert!(close(lb.apply(165.0), 74.842_741_05));
        let back = Conversion::between("kg", "LBS").unwrap();
        assert!(close(back.apply(lb.apply(165.0)), 165.0));
        assert!(close(
            Conversion::between("hours", "min").unwrap().apply(7.5),
            450.0
        ));
        assert!(close(
            Conversion::between("s", "ms").unwrap().apply(0.042),
            42.0
        ));
        assert!(close(
            Conversion::between("°F", "degC").unwrap().apply(98.6),
            37.0
        ));
        assert!(close(
            Conversion::between("C", "F").unwrap().apply(-40.0),
            -40.0
        ));
        assert!(close(
            Conversion::between("kJ", "kcal").unwrap().apply(4.184),
            1.0
        ));
        assert!(close(
            Conversion::between("%", "fraction").unwrap().apply(85.0),
            0.85
        ));
    }

    #[test]
    fn the_same_spelling_passes_even_when_unknown() {
        assert_eq!(
            Conversion::between("score", "Score").unwrap(),
            Conversion::SAME
        );
        assert_eq!(
            Conversion::between("kg", "kilograms").unwrap().apply(2.0),
            2.0
        );
    }

    #[test]
    fn units_of_different_quantities_or_unknown_ones_are_refused() {
        let e = Conversion::between("cm", "kg").unwrap_err();
        assert!(e.to_string().contains("\"cm\""), "{e}");
        assert!(Conversion::between("score", "kg").is_err());
        assert!(Conversion::between("min", "bpm").is_err());
    }
}
