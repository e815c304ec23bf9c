//! `membership-sim`: the SWIM membership core (`kvs::cluster::swim`) simulated at 50 and
//! 1,000 members on a virtual clock, with 5 % packet loss and one member whose packets
//! are all delayed by 800 ms (one deterministic run per size and seed; a smoke run with
//! `--seconds` under 1 simulates 50 members briefly). Figures: the time until every
//! member knows of a join, the time until a killed member is declared down (per observer
//! p50/p99/max, and by the last observer), false suspicions and false deaths per
//! member-hour, and membership payload bytes per second per member.

use std::time::Duration;

use anyhow::Result;
use kvs::cluster::swim_sim::{self, SimConfig, SimReport};

use crate::report::Figure;
use crate::Settings;

pub async fn membership_sim(settings: &Settings, run: usize) -> Result<Vec<Figure>> {
    let sizes: &[usize] = if settings.seconds < 1.0 { &[50] } else { &[50, 1_000] };
    let smoke = settings.seconds < 1.0;
    let mut figures = Vec::new();
    for &members in sizes {
        let config = SimConfig {
            members,
            seed: SimConfig::full().seed + run as u64,
            ..if smoke { SimConfig::smoke() } else { SimConfig::full() }
        };
        let report = tokio::task::spawn_blocking(move || swim_sim::run(config)).await?;
        figures.extend(figures_of(&report));
    }
    Ok(figures)
}

fn figures_of(report: &SimReport) -> Vec<Figure> {
    let n = report.members;
    let secs = |duration: Option<Duration>| duration.map_or(f64::NAN, |d| d.as_secs_f64());
    let by_all = report.detected_by_all.iter().map(|d| secs(*d)).fold(0.0, f64::max);
    vec![
        Figure::new(
            &format!("{n} members: join known, p50 of members"),
            "s",
            secs(swim_sim::quantile(&report.join_known, 0.50)),
        ),
        Figure::new(
            &format!("{n} members: join known, p99 of members"),
            "s",
            secs(swim_sim::quantile(&report.join_known, 0.99)),
        ),
        Figure::new(
            &format!("{n} members: join known by all"),
            "s",
            secs(report.join_known_by_all),
        ),
        Figure::new(
            &format!("{n} members: kill detected, p50 of observers"),
            "s",
            secs(swim_sim::quantile(&report.detections, 0.50)),
        ),
        Figure::new(
            &format!("{n} members: kill detected, p99 of observers"),
            "s",
            secs(swim_sim::quantile(&report.detections, 0.99)),
        ),
        Figure::new(
            &format!("{n} members: kill detected, max of observers"),
            "s",
            secs(swim_sim::quantile(&report.detections, 1.0)),
        ),
        Figure::new(
            &format!("{n} members: kill detected by all but the starved member (worst kill)"),
            "s",
            by_all,
        ),
        Figure::new(
            &format!("{n} members: kills the starved member never declared down"),
            "kills",
            report.kills_missed_by_starved as f64,
        ),
        Figure::new(
            &format!("{n} members: the starved member learned of the join"),
            "yes=1",
            f64::from(u8::from(report.starved_knew_join)),
        ),
        Figure::new(
            &format!("{n} members: members the joiner lacked after its join"),
            "members",
            report.joiner_lacked as f64,
        ),
        Figure::new(
            &format!("{n} members: false suspicions"),
            "/member-hour",
            report.false_suspicions_per_member_hour,
        ),
        Figure::new(
            &format!("{n} members: false deaths"),
            "/member-hour",
            report.false_deaths_per_member_hour,
        ),
        Figure::new(
            &format!("{n} members: false deaths declared by the starved member"),
            "declarations",
            report.false_deaths_by_starved as f64,
        ),
        Figure::new(
            &format!("{n} members: false deaths of the starved member"),
            "declarations",
            report.false_deaths_of_starved as f64,
        ),
        Figure::new(
            &format!("{n} members: live members declared down"),
            "members",
            report.falsely_declared_down as f64,
        ),
        Figure::new(
            &format!("{n} members: membership payload per member"),
            "bytes/s",
            report.bytes_per_member_per_s,
        ),
        Figure::new(
            &format!("{n} members: members missing a live member at the end"),
            "members",
            report.members_missing_someone as f64,
        ),
    ]
}
