//! The overview's charts: events/s and deliveries/s over the last hour.
//!
//! [`sample`] reads delivery's counters ([`Rates::totals`], the same the heartbeat
//! publishes) every [`SAMPLE_EVERY`] and keeps the rate of each interval, [`SAMPLES`] of
//! them (one hour), in memory; [`Chart`] turns one series into the points of an SVG polyline
//! rendered on the server (no script, no inline style).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::ops::Rates;

/// How often the counters are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// Samples kept: an hour's worth.
pub const SAMPLES: usize = 360;

/// Chart size in SVG units.
const WIDTH: f64 = 360.0;
const HEIGHT: f64 = 80.0;

/// Rates of the last hour, oldest first: (events/s, deliveries/s) per interval.
#[derive(Debug, Default)]
pub struct History {
    samples: Mutex<VecDeque<(f64, f64)>>,
}

impl History {
    /// Adds one interval's rates.
    pub fn push(&self, rates: (f64, f64)) {
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        if samples.len() >= SAMPLES {
            samples.pop_front();
        }
        samples.push_back(rates);
    }

    /// The events/s and deliveries/s charts.
    pub fn charts(&self) -> (Chart, Chart) {
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        let events: Vec<f64> = samples.iter().map(|s| s.0).collect();
        let deliveries: Vec<f64> = samples.iter().map(|s| s.1).collect();
        (Chart::of(&events), Chart::of(&deliveries))
    }
}

/// One series drawn.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    /// `x,y x,y …` in a 360×80 box, newest at the right.
    pub points: String,
    /// The highest value (the top of the box).
    pub max: String,
    /// The newest value.
    pub last: String,
    /// Samples drawn.
    pub samples: usize,
}

impl Chart {
    /// Draws `values` (oldest first); the top of the box is their maximum (at least 1).
    pub fn of(values: &[f64]) -> Chart {
        let max = values.iter().copied().fold(1.0_f64, f64::max);
        let step = WIDTH / (SAMPLES - 1) as f64;
        let start = SAMPLES.saturating_sub(values.len());
        let points = values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let x = (start + i) as f64 * step;
                let y = HEIGHT - (v / max) * HEIGHT;
                format!("{x:.1},{y:.1}")
            })
            .collect::<Vec<_>>()
            .join(" ");
        Chart {
            points,
            max: format!("{max:.1}"),
            last: format!("{:.1}", values.last().copied().unwrap_or(0.0)),
            samples: values.len(),
        }
    }
}

/// Samples `rates` into `history` every [`SAMPLE_EVERY`] until `stop`.
pub async fn sample(history: Arc<History>, rates: Arc<Rates>, stop: CancellationToken) {
    let mut last = (Instant::now(), rates.totals());
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let now = (Instant::now(), rates.totals());
        let secs = now.0.duration_since(last.0).as_secs_f64().max(0.001);
        history.push((
            now.1.0.saturating_sub(last.1.0) as f64 / secs,
            now.1.1.saturating_sub(last.1.1) as f64 / secs,
        ));
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_scale_to_their_maximum_newest_at_the_right() {
        let chart = Chart::of(&[0.0, 2.0, 4.0]);
        assert_eq!(chart.points, "358.0,80.0 359.0,40.0 360.0,0.0");
        assert_eq!((chart.max.as_str(), chart.last.as_str()), ("4.0", "4.0"));
        let empty = Chart::of(&[]);
        assert_eq!((empty.points.as_str(), empty.max.as_str()), ("", "1.0"));
        let history = History::default();
        for i in 0..SAMPLES + 3 {
            history.push((i as f64, 0.0));
        }
        let (events, deliveries) = history.charts();
        assert_eq!(events.samples, SAMPLES);
        assert_eq!(events.last, format!("{:.1}", (SAMPLES + 2) as f64));
        assert_eq!(deliveries.max, "1.0");
    }
}
