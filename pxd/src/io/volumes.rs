//! Each volume's I/O on this node, for `/metrics` and `pxd volume stats`: the counters of the
//! volume's top device (the one applications use), from the eBPF probes, or from the
//! kernel's own `/sys/dev/block/*/stat` where the probes cannot load. The reconciler tells
//! which device carries which volume as volumes come and go ([`VolumeIo::set_devices`]).

use super::{block_device_dev, dev_name, DevT, IoCounts, IoProbe, Latencies};
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use std::path::PathBuf;
use std::sync::RwLock;

/// Where the counts come from.
enum Source {
    Probe(Box<IoProbe>),
    /// The probes are off (`--no-ebpf`) or could not load: counts without latencies.
    Sysfs,
}

/// A volume whose top device is on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeDevice {
    pub id: String,
    pub name: String,
    /// Its top device, as applications open it (`/dev/mapper/...`).
    pub path: PathBuf,
}

/// One volume's I/O since the counters began (the probe's load, or the device's creation).
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeSample {
    pub id: String,
    pub name: String,
    /// This node's id.
    pub node: String,
    pub dev: DevT,
    pub counts: IoCounts,
    /// Read and write completion latencies; only from the probes.
    pub latency: Option<(Latencies, Latencies)>,
    /// The I/O of each cgroup (its kernfs id) that did any; only from the probes.
    pub cgroups: Vec<(u64, IoCounts)>,
}

/// The node's per-volume I/O accounting, and its Prometheus collector.
pub struct VolumeIo {
    source: Source,
    /// The cgroup hierarchy that throttles block I/O here, detected at start.
    hierarchy: Option<super::cgroups::Hierarchy>,
    /// This node's id, and each volume's top device here.
    devices: RwLock<(String, Vec<(VolumeDevice, DevT)>)>,
    descs: Vec<Desc>,
}

/// A counter family: name, help, and the field of [`IoCounts`] it shows.
type CounterFamily = (&'static str, &'static str, fn(&IoCounts) -> u64);

const COUNTERS: [CounterFamily; 4] = [
    (
        "pxd_volume_reads_total",
        "Read I/Os applications issued to the volume's device on this node",
        |c| c.reads,
    ),
    (
        "pxd_volume_writes_total",
        "Write I/Os applications issued to the volume's device on this node",
        |c| c.writes,
    ),
    (
        "pxd_volume_read_bytes_total",
        "Bytes read from the volume's device on this node",
        |c| c.read_bytes,
    ),
    (
        "pxd_volume_written_bytes_total",
        "Bytes written to the volume's device on this node",
        |c| c.written_bytes,
    ),
];

const LATENCIES: [(&str, &str); 2] = [
    (
        "pxd_volume_read_latency_seconds",
        "Completion latency of reads of the volume's device on this node (eBPF)",
    ),
    (
        "pxd_volume_write_latency_seconds",
        "Completion latency of writes to the volume's device on this node (eBPF)",
    ),
];

const EBPF_UP: (&str, &str) = (
    "pxd_ebpf_up",
    "1 if the eBPF I/O probes are loaded; 0 when counts come from /sys/block (no latencies)",
);

/// Every family this collector exports.
pub const FAMILIES: [&str; 7] = [
    COUNTERS[0].0,
    COUNTERS[1].0,
    COUNTERS[2].0,
    COUNTERS[3].0,
    LATENCIES[0].0,
    LATENCIES[1].0,
    EBPF_UP.0,
];

/// The exported latency buckets: upper bounds `2^(b+1)` ns for these `b`, from about 1 µs to
/// about 69 s; `+Inf` takes the rest.
const EXPORTED_BUCKETS: std::ops::RangeInclusive<usize> = 9..=35;

const LABELS: [&str; 3] = ["volume", "volume_id", "node"];

impl VolumeIo {
    /// Loads the probes unless `no_ebpf`; where they cannot load, says why once and counts
    /// from `/sys/block`. Never fails: accounting is no reason for a node not to start.
    pub fn start(no_ebpf: bool) -> Self {
        let source = if no_ebpf {
            tracing::info!("eBPF I/O probes off (--no-ebpf): volume I/O counts come from /sys/block, without latencies");
            Source::Sysfs
        } else {
            match IoProbe::load() {
                Ok(probe) => Source::Probe(Box::new(probe)),
                Err(e) => {
                    let chain = error_chain(&e);
                    tracing::warn!(error = %chain, "the eBPF I/O probes cannot load: volume I/O counts come from /sys/block, without latencies");
                    Source::Sysfs
                }
            }
        };
        Self::with_source(source)
    }

    fn with_source(source: Source) -> Self {
        let labels: Vec<String> = LABELS.iter().map(|l| (*l).to_owned()).collect();
        let desc = |name: &str, help: &str, labels: Vec<String>| {
            Desc::new(name.to_owned(), help.to_owned(), labels, Default::default())
        };
        let descs = COUNTERS
            .iter()
            .map(|(n, h, _)| (*n, *h))
            .chain(LATENCIES)
            .map(|(n, h)| desc(n, h, labels.clone()))
            .chain([desc(EBPF_UP.0, EBPF_UP.1, Vec::new())])
            .collect::<Result<Vec<_>, _>>()
            // The names and labels above are constants that Desc accepts.
            .unwrap_or_default();
        Self {
            source,
            hierarchy: super::cgroups::Hierarchy::detect(),
            devices: RwLock::new((String::new(), Vec::new())),
            descs,
        }
    }

    /// The cgroup hierarchy that throttles block I/O on this host, if one is mounted.
    pub fn hierarchy(&self) -> Option<&super::cgroups::Hierarchy> {
        self.hierarchy.as_ref()
    }

    /// Each volume's id and its top device here, as the reconciler last told.
    pub fn devices(&self) -> Vec<(String, DevT)> {
        let d = self.devices.read().unwrap_or_else(|p| p.into_inner());
        d.1.iter().map(|(v, dev)| (v.id.clone(), *dev)).collect()
    }

    /// The probes' per-cgroup counters (device, cgroup id, counts); `None` without them.
    pub fn cgroup_counts(&self) -> Option<Vec<(DevT, u64, IoCounts)>> {
        match &self.source {
            Source::Probe(p) => p.cgroup_counts().ok(),
            Source::Sysfs => None,
        }
    }

    /// Whether the probes are loaded.
    pub fn ebpf_up(&self) -> bool {
        matches!(self.source, Source::Probe(_))
    }

    /// The volumes whose top device is on this node (`node`) now; a device not (yet) there
    /// is left out.
    pub fn set_devices(&self, node: String, volumes: Vec<VolumeDevice>) {
        let found: Vec<(VolumeDevice, DevT)> = volumes
            .into_iter()
            .filter_map(|v| block_device_dev(&v.path).ok().map(|dev| (v, dev)))
            .collect();
        *self.devices.write().unwrap_or_else(|p| p.into_inner()) = (node, found);
    }

    /// Every volume's I/O now, by name.
    pub fn sample(&self) -> Vec<VolumeSample> {
        let (node, devices) = self
            .devices
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let by_cgroup = match &self.source {
            Source::Probe(p) => p.cgroup_counts().unwrap_or_else(|e| {
                tracing::debug!(error = %e, "reading the per-cgroup counters");
                Vec::new()
            }),
            Source::Sysfs => Vec::new(),
        };
        let mut out: Vec<VolumeSample> = devices
            .into_iter()
            .filter_map(|(v, dev)| {
                let (counts, latency) = match &self.source {
                    Source::Probe(p) => (p.counts(dev).ok()?, p.latencies(dev).ok()),
                    Source::Sysfs => (sysfs_counts(dev)?, None),
                };
                let mut cgroups: Vec<(u64, IoCounts)> = by_cgroup
                    .iter()
                    .filter(|(d, _, _)| *d == dev)
                    .map(|(_, cg, c)| (*cg, *c))
                    .collect();
                cgroups.sort_by_key(|(cg, _)| *cg);
                Some(VolumeSample {
                    id: v.id,
                    name: v.name,
                    node: node.clone(),
                    dev,
                    counts,
                    latency,
                    cgroups,
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn labels(s: &VolumeSample) -> Vec<proto::LabelPair> {
        // In name order, as the crate's own vectors render them.
        [
            ("node", s.node.as_str()),
            ("volume", &s.name),
            ("volume_id", &s.id),
        ]
        .into_iter()
        .map(|(k, v)| {
            let mut l = proto::LabelPair::default();
            l.set_name(k.to_owned());
            l.set_value(v.to_owned());
            l
        })
        .collect()
    }
}

/// A metric family of `kind` named `name`, with `metrics`.
fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<proto::Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_owned());
    f.set_help(help.to_owned());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

/// The Prometheus histogram of `l`.
fn histogram(l: &Latencies) -> proto::Histogram {
    let mut h = proto::Histogram::default();
    let mut cumulative = 0u64;
    let mut buckets = Vec::new();
    for (b, n) in l.buckets.iter().enumerate() {
        cumulative = cumulative.wrapping_add(*n);
        if EXPORTED_BUCKETS.contains(&b) {
            let mut bucket = proto::Bucket::default();
            bucket.set_upper_bound(super::bucket_upper_seconds(b));
            bucket.set_cumulative_count(cumulative);
            buckets.push(bucket);
        }
    }
    h.set_bucket(buckets);
    h.set_sample_count(cumulative);
    h.set_sample_sum(l.sum_ns as f64 / 1e9);
    h
}

impl Collector for VolumeIo {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.families(&self.sample())
    }
}

impl VolumeIo {
    /// The metric families of `samples`.
    fn families(&self, samples: &[VolumeSample]) -> Vec<MetricFamily> {
        let mut out = Vec::new();
        for (name, help, field) in COUNTERS {
            let metrics = samples
                .iter()
                .map(|s| {
                    let mut c = proto::Counter::default();
                    c.set_value(field(&s.counts) as f64);
                    let mut m = proto::Metric::from_label(Self::labels(s));
                    m.set_counter(c);
                    m
                })
                .collect();
            out.push(family(name, help, MetricType::COUNTER, metrics));
        }
        for (i, (name, help)) in LATENCIES.into_iter().enumerate() {
            let metrics = samples
                .iter()
                .filter_map(|s| {
                    let (read, write) = s.latency.as_ref()?;
                    let mut m = proto::Metric::from_label(Self::labels(s));
                    m.set_histogram(histogram(if i == 0 { read } else { write }));
                    Some(m)
                })
                .collect();
            out.push(family(name, help, MetricType::HISTOGRAM, metrics));
        }
        let mut up = proto::Gauge::default();
        up.set_value(if self.ebpf_up() { 1.0 } else { 0.0 });
        let up = proto::Metric::from_gauge(up);
        out.push(family(EBPF_UP.0, EBPF_UP.1, MetricType::GAUGE, vec![up]));
        out
    }
}

/// A device's completed I/O from `/sys/dev/block/MAJ:MIN/stat` (sectors of 512 bytes).
fn sysfs_counts(dev: DevT) -> Option<IoCounts> {
    let path = format!("/sys/dev/block/{}/stat", dev_name(dev));
    parse_stat(&std::fs::read_to_string(path).ok()?)
}

/// The fields of a block `stat` file (Documentation/block/stat.rst): reads completed, reads
/// merged, sectors read, ..., writes completed (the fifth), ..., sectors written (the seventh).
fn parse_stat(text: &str) -> Option<IoCounts> {
    let f: Vec<u64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    Some(IoCounts {
        reads: *f.first()?,
        read_bytes: f.get(2)? * 512,
        writes: *f.get(4)?,
        written_bytes: f.get(6)? * 512,
    })
}

/// An error with its sources, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_stat_line_gives_ios_and_bytes() {
        let line = "    1200   3  9600  50   700  1  5600  20  0  70  70  0 0 0 0 0 0\n";
        assert_eq!(
            parse_stat(line),
            Some(IoCounts {
                reads: 1200,
                read_bytes: 9600 * 512,
                writes: 700,
                written_bytes: 5600 * 512,
            })
        );
        assert_eq!(parse_stat("1 2"), None);
        assert_eq!(parse_stat("x 2 3 4 5 6 7"), None);
    }

    #[test]
    fn volumes_render_as_counters_and_histograms_with_their_labels() {
        let io = VolumeIo::with_source(Source::Sysfs);
        let registry = prometheus::Registry::new();
        // Registering checks the descriptions: names, help and labels are valid.
        registry
            .register(Box::new(SampleCollector(io, sample())))
            .unwrap();
        let mut text = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut text,
        )
        .unwrap();
        let text = String::from_utf8(text).unwrap();
        let labels = "node=\"00000000000000aa\",volume=\"db\",volume_id=\"v1\"";
        for line in [
            format!("pxd_volume_reads_total{{{labels}}} 3"),
            format!("pxd_volume_written_bytes_total{{{labels}}} 8192"),
            format!("pxd_volume_write_latency_seconds_bucket{{{labels},le=\"0.000002048\"}} 2"),
            format!("pxd_volume_write_latency_seconds_bucket{{{labels},le=\"+Inf\"}} 2"),
            format!("pxd_volume_write_latency_seconds_count{{{labels}}} 2"),
            format!("pxd_volume_read_latency_seconds_count{{{labels}}} 3"),
            "pxd_ebpf_up 0".to_owned(),
            "# TYPE pxd_volume_read_latency_seconds histogram".to_owned(),
        ] {
            assert!(text.contains(&line), "no {line} in\n{text}");
        }
    }

    fn sample() -> VolumeSample {
        let mut read = Latencies::default();
        read.buckets[12] = 3;
        let mut write = Latencies::default();
        write.buckets[10] = 2;
        write.sum_ns = 3000;
        VolumeSample {
            id: "v1".into(),
            name: "db".into(),
            node: "00000000000000aa".into(),
            dev: 253 << crate::io::MINOR_BITS,
            counts: IoCounts {
                reads: 3,
                writes: 2,
                read_bytes: 12288,
                written_bytes: 8192,
            },
            latency: Some((read, write)),
            cgroups: Vec::new(),
        }
    }

    /// The collector over a fixed sample instead of live devices.
    struct SampleCollector(VolumeIo, VolumeSample);

    impl Collector for SampleCollector {
        fn desc(&self) -> Vec<&Desc> {
            self.0.desc()
        }
        fn collect(&self) -> Vec<MetricFamily> {
            self.0.families(std::slice::from_ref(&self.1))
        }
    }
}
