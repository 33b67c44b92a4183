//! `sluice-loadgen`: pipelined Produce or Fetch load against one broker on this machine.
//!
//! Every run is bounded by a message count and a duration, and only loopback addresses are
//! accepted. The last line of output is `RESULT key=value ...` for scripts.

use std::process::ExitCode;
use std::time::Duration;

use sluice_loadgen::args::Flags;
use sluice_loadgen::histogram::Histogram;
use sluice_loadgen::wire::Conn;
use sluice_loadgen::{fetch, produce};

const USAGE: &str = "\
usage: sluice-loadgen produce --bootstrap 127.0.0.1:PORT [options]
       sluice-loadgen fetch --bootstrap 127.0.0.1:PORT [options]
       sluice-loadgen create-topic --bootstrap 127.0.0.1:PORT --topic T --partitions P

produce options (defaults in brackets):
  --topic T [bench]         created with --partitions partitions if missing
  --partitions P [1]        requests rotate over partitions 0..P
  --connections N [1]       producers, one connection each
  --in-flight D [8]         Produce requests outstanding per connection
  --records M [100]         records per batch, one batch per request
  --size S [100]            value bytes per record (null key)
  --acks A [-1]             0, 1 or -1 (all)
  --messages C [1000000]    stop after C messages ...
  --seconds T [10]          ... or T seconds, whichever first (T <= 600)
  --rate R                  total messages/s (default: as fast as acks come back)
  --threads K [1]           runtime worker threads (1 = current-thread runtime)

fetch options:
  --topic T [bench] --partition P [0] --offset O [0]
  --messages C [10000000] --seconds T [10]
  --max-bytes B [52428800] --partition-max-bytes B [1048576]

Latency is per request: from queueing the request on the socket to reading its response.";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(cmd) = args.next() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    if cmd == "-h" || cmd == "--help" {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    match run(&cmd, args.collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Only addresses on this machine: the load generator is for local benchmarks.
fn loopback(addr: &str) -> Result<String, String> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ok = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if ok {
        Ok(addr.to_string())
    } else {
        Err(format!(
            "--bootstrap {addr}: only loopback addresses are allowed"
        ))
    }
}

fn seconds(f: &mut Flags) -> Result<Duration, String> {
    let s: f64 = f.get("seconds", 10.0)?;
    if !(s > 0.0 && s <= 600.0) {
        return Err("--seconds must be in (0, 600]".into());
    }
    Ok(Duration::from_secs_f64(s))
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime, String> {
    let mut b = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    b.enable_all().build().map_err(|e| e.to_string())
}

fn run(cmd: &str, args: Vec<String>) -> Result<(), String> {
    let mut f = Flags::parse(args)?;
    let bootstrap = loopback(
        &f.opt::<String>("bootstrap")?
            .ok_or("--bootstrap is required")?,
    )?;
    match cmd {
        "produce" => {
            let opts = produce::ProduceOpts {
                bootstrap,
                topic: f.get("topic", "bench".to_string())?,
                partitions: f.get("partitions", 1)?,
                connections: f.get("connections", 1)?,
                in_flight: f.get("in-flight", 8)?,
                records: f.get("records", 100)?,
                size: f.get("size", 100)?,
                acks: f.get("acks", -1)?,
                messages: f.get("messages", 1_000_000)?,
                duration: seconds(&mut f)?,
                rate: f.opt("rate")?,
            };
            let threads = f.get("threads", 1)?;
            f.finish()?;
            if ![0, 1, -1].contains(&opts.acks) {
                return Err("--acks must be 0, 1 or -1".into());
            }
            if opts.partitions < 1 || opts.connections < 1 || opts.records < 1 {
                return Err("--partitions, --connections and --records must be at least 1".into());
            }
            println!(
                "produce: {} conns x {} in flight, batches of {} x {} B, acks={}, {} partitions, \
                 up to {} msgs / {:?}{}",
                opts.connections,
                opts.in_flight,
                opts.records,
                opts.size,
                opts.acks,
                opts.partitions,
                opts.messages,
                opts.duration,
                opts.rate
                    .map(|r| format!(", rate {r} msgs/s"))
                    .unwrap_or_default()
            );
            let r = runtime(threads)?.block_on(produce::run(opts))?;
            let secs = r.elapsed.as_secs_f64().max(1e-9);
            println!(
                "{} msgs in {:.3} s: {:.0} msgs/s, {:.2} MB/s values, {:.2} MB/s batches; {} requests, \
                 {} errors{}",
                r.messages,
                secs,
                r.messages as f64 / secs,
                r.value_bytes as f64 / secs / 1e6,
                r.batch_bytes as f64 / secs / 1e6,
                r.requests,
                r.errors,
                r.first_error
                    .as_deref()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default()
            );
            print_latency("request latency", &r.latency);
            println!(
                "RESULT mode=produce msgs={} value_bytes={} batch_bytes={} secs={:.6} msgs_per_sec={:.0} \
                 mb_per_sec={:.3} batch_mb_per_sec={:.3} requests={} errors={} late_sends={} {}",
                r.messages,
                r.value_bytes,
                r.batch_bytes,
                secs,
                r.messages as f64 / secs,
                r.value_bytes as f64 / secs / 1e6,
                r.batch_bytes as f64 / secs / 1e6,
                r.requests,
                r.errors,
                r.late_sends,
                latency_fields(&r.latency)
            );
            if r.errors > 0 || r.messages == 0 {
                return Err(format!(
                    "{} partition errors, {} messages acknowledged",
                    r.errors, r.messages
                ));
            }
            Ok(())
        }
        "fetch" => {
            let opts = fetch::FetchOpts {
                bootstrap,
                topic: f.get("topic", "bench".to_string())?,
                partition: f.get("partition", 0)?,
                offset: f.get("offset", 0)?,
                messages: f.get("messages", 10_000_000)?,
                duration: seconds(&mut f)?,
                max_bytes: f.get("max-bytes", 52_428_800)?,
                partition_max_bytes: f.get("partition-max-bytes", 1_048_576)?,
            };
            f.finish()?;
            let r = runtime(1)?.block_on(fetch::run(opts))?;
            let secs = r.elapsed.as_secs_f64().max(1e-9);
            println!(
                "{} msgs ({} batch bytes) in {:.3} s: {:.0} msgs/s, {:.2} MB/s; {} fetches, next offset {}",
                r.messages,
                r.batch_bytes,
                secs,
                r.messages as f64 / secs,
                r.batch_bytes as f64 / secs / 1e6,
                r.requests,
                r.next_offset
            );
            print_latency("fetch latency", &r.latency);
            println!(
                "RESULT mode=fetch msgs={} batch_bytes={} secs={:.6} msgs_per_sec={:.0} mb_per_sec={:.3} \
                 requests={} next_offset={} {}",
                r.messages,
                r.batch_bytes,
                secs,
                r.messages as f64 / secs,
                r.batch_bytes as f64 / secs / 1e6,
                r.requests,
                r.next_offset,
                latency_fields(&r.latency)
            );
            if r.messages == 0 {
                return Err("no messages fetched".into());
            }
            Ok(())
        }
        "create-topic" => {
            let topic: String = f.opt("topic")?.ok_or("--topic is required")?;
            let partitions: i32 = f.get("partitions", 1)?;
            f.finish()?;
            runtime(1)?.block_on(async {
                let mut c = Conn::connect(&bootstrap).await?;
                let v = c.negotiate().await?;
                c.create_topic(&v, &topic, partitions).await
            })?;
            println!("topic {topic}: {partitions} partitions ready");
            Ok(())
        }
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    }
}

fn print_latency(what: &str, h: &Histogram) {
    if h.count() > 0 {
        println!(
            "{what} (µs): p50 {} p99 {} p99.9 {} max {} mean {:.0} over {} samples",
            h.quantile(0.5),
            h.quantile(0.99),
            h.quantile(0.999),
            h.max(),
            h.mean(),
            h.count()
        );
    }
}

fn latency_fields(h: &Histogram) -> String {
    format!(
        "lat_n={} lat_p50_us={} lat_p99_us={} lat_p999_us={} lat_max_us={} lat_mean_us={:.0}",
        h.count(),
        h.quantile(0.5),
        h.quantile(0.99),
        h.quantile(0.999),
        h.max(),
        h.mean()
    )
}
