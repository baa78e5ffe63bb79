//! Draws the heap over time of each scenario of the `slow_consumer` example,
//! from the samples its `--csv` writes, as an SVG:
//!
//! ```text
//! cargo run --release --example slow_consumer -- --csv memory.csv
//! cargo run -p fanout-extras --bin plot_memory -- memory.csv docs/memory.svg
//! ```

use std::error::Error;

use plotters::prelude::*;

const MIB: f64 = 1024.0 * 1024.0;

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [csv, svg] = args.as_slice() else {
        return Err("usage: plot_memory SAMPLES.csv OUTPUT.svg".into());
    };
    // Each scenario's (seconds, MiB) samples, in the order they come.
    let mut scenarios: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for line in std::fs::read_to_string(csv)?.lines().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        let [name, seconds, heap_bytes, _buffered] = fields.as_slice() else {
            return Err(format!("not a sample: {line:?}").into());
        };
        let sample = (seconds.parse()?, heap_bytes.parse::<f64>()? / MIB);
        match scenarios.iter_mut().find(|(known, _)| known == name) {
            Some((_, samples)) => samples.push(sample),
            None => scenarios.push((name.to_string(), vec![sample])),
        }
    }
    let samples = scenarios.iter().flat_map(|(_, samples)| samples);
    let (max_seconds, max_mib) = samples.fold((1.0, 1.0), |(x, y), &(s, m)| (s.max(x), m.max(y)));

    let root = SVGBackend::new(svg, (800, 450)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Heap in use: one stream, a fast and a slow consumer",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_seconds, 0.0..max_mib * 1.05)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the scenario started")
        .y_desc("heap in use (MiB)")
        .y_label_formatter(&|mib| format!("{mib:.0}"))
        .light_line_style(TRANSPARENT)
        .draw()?;
    for (index, (name, samples)) in scenarios.iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        let style = color.stroke_width(2);
        chart
            .draw_series(LineSeries::new(samples.iter().copied(), style))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
