//! Opening the store: the private data directory, sled (its lock, its
//! unfinished snapshots), the event log, and the writer threads.

use super::*;

impl StoreConfig {
    /// The storage settings of `config`, counting into `metrics`.
    pub fn from_config(config: &crate::config::Config, metrics: Arc<Metrics>) -> Self {
        StoreConfig {
            path: config.data_dir.clone(),
            cache_bytes: config.state_cache_bytes,
            segment_bytes: config.log_segment_bytes,
            max_group: config.max_group_commit,
            commit_delay: config.group_commit_delay,
            metrics,
            recovery: config.recovery,
            zero_fill: config.log_zero_fill,
        }
    }
}

impl Store {
    /// Opens (or creates) the database and starts the writer.
    pub fn open(config: &StoreConfig) -> Result<(Store, WriterHandle)> {
        Self::open_on(config, Arc::new(log::fs::RealFs))
    }

    /// [`Store::open`], with the event log's files and the state's syncs on
    /// `fs` (tests inject faults or count syncs).
    pub(crate) fn open_on(config: &StoreConfig, fs: Arc<dyn Fs>) -> Result<(Store, WriterHandle)> {
        let opened = open_local(config, fs)?;
        Ok((
            Store {
                inner: Arc::new(Inner {
                    backend: Backend::Embedded(opened.local),
                    head: opened.head,
                    health: opened.health,
                    erasures: Default::default(),
                    metrics: config.metrics.clone(),
                }),
            },
            WriterHandle(opened.threads),
        ))
    }
}

/// The embedded backend, open, and its writer threads.
struct OpenedLocal {
    local: Local,
    head: watch::Receiver<Offset>,
    health: watch::Receiver<StoreHealth>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Opens (or creates) the data directory's log and state, and starts their
/// writers.
fn open_local(config: &StoreConfig, fs: Arc<dyn Fs>) -> Result<OpenedLocal> {
    create_private_dir(&config.path)?;
    let swap_lock = rewrite::exclusive(&config.path)?;
    rewrite::finish(&config.path)?;
    remove_unfinished_snapshots(&config.path)?;
    let db = open_sled(sled_config(&config.path, config.cache_bytes), &config.path)?;
    // sled's own lock guards the files from here on.
    drop(swap_lock);
    let tables = Tables::open(&db)?;
    let log_dir = config.path.join(LOG_DIR);
    migrate_sled_events(&db, &log_dir, config.log_options(fs.clone()))?;
    let (log, log_writer) = EventLog::open(&log_dir, config.log_options(fs.clone()))?;
    let next = log.next();
    check_state_against_head(&tables, next, config.recovery)?;
    let last_published = match log.newest()? {
        Some(record) => keys::split_event_record(&record)?.1,
        None => 0,
    };
    let (head_tx, head_rx) = watch::channel(next);
    let (health_tx, health_rx) = watch::channel(StoreHealth::default());
    // Bounded so producers feel backpressure when the disk falls behind.
    let (log_tx, log_rx) = mpsc::channel(config.max_group.max(1024));
    let (state_tx, state_rx) = mpsc::channel(config.max_group.max(1024));
    let log_thread = LogWriterThread::new(
        log_writer,
        last_published,
        head_tx,
        health_tx.clone(),
        config.max_group,
        config.metrics.clone(),
        config.commit_delay,
    );
    let state = Arc::new(StateDb::new(
        db,
        tables,
        &config.path,
        config.cache_bytes,
        fs.open(&data_file(&config.path), false)?,
    ));
    let state_thread = StateWriterThread::new(state.clone(), config.max_group, health_tx.clone());
    let sync_thread = StateSyncThread::new(
        state.clone(),
        &config.path,
        fs,
        health_tx,
        state_tx.downgrade(),
        config.metrics.clone(),
    )?;
    // One applied group may wait while the previous one syncs; the
    // writer then blocks and the next group grows meanwhile.
    let (applied_tx, applied_rx) = std::sync::mpsc::sync_channel(1);
    let threads = vec![
        std::thread::Builder::new()
            .name("stevedore-log".into())
            .spawn(move || log_thread.run(log_rx))?,
        std::thread::Builder::new()
            .name("stevedore-state".into())
            .spawn(move || state_thread.run(state_rx, applied_tx))?,
        std::thread::Builder::new()
            .name("stevedore-sync".into())
            .spawn(move || sync_thread.run(applied_rx))?,
    ];
    scrub(log.clone(), config.metrics.clone())?;
    tracing::info!(path = %config.path.display(), next_offset = next.get(), "store opened");
    Ok(OpenedLocal {
        local: Local {
            log,
            state,
            ops: std::sync::Mutex::new(Some(local::Senders {
                log: log_tx,
                state: state_tx,
            })),
            head: head_rx.clone(),
        },
        head: head_rx,
        health: health_rx,
        threads,
    })
}

impl Store {
    /// Opens the store on a NATS JetStream cluster (`backend =
    /// "jetstream"`): connects, checks that every node syncs every write
    /// (refusing to start otherwise, unless allowed), opens the stream and
    /// the state bucket, and keeps this broker's copy of
    /// both in `config.path`'s `cluster-copy` (emptied first: the cluster is
    /// the record) up to date.
    pub async fn open_cluster(
        options: &jetstream::ClusterOptions,
        config: &StoreConfig,
    ) -> Result<(Store, WriterHandle)> {
        let opened = jetstream::ClusterLog::open(options, config.metrics.clone()).await?;
        let copy_config = StoreConfig {
            path: config.path.join(replica::COPY_DIR),
            ..config.clone()
        };
        create_private_dir(&config.path)?;
        match std::fs::remove_dir_all(&copy_config.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        // The copy is rebuilt at every start: nothing in it needs an fsync.
        let fs: Arc<dyn Fs> = Arc::new(log::fs::UnsyncedFs);
        let first = opened.extent.first();
        if first > FIRST_OFFSET {
            // Retention removed the stream's oldest events (or a migrated
            // log started later): the copy starts where the stream does.
            create_private_dir(&copy_config.path)?;
            let dir = copy_config.path.join(LOG_DIR);
            fs.create_dir_all(&dir)?;
            log::write_start_file(&*fs, &dir, first)?;
        }
        let copy = open_local(&copy_config, fs)?;
        let senders = copy.local.senders()?;
        let mirror = jetstream::MirrorConfig {
            replicas: options.replicas,
            ..jetstream::MirrorConfig::with_prefix(&options.prefix)
        };
        let (erased_tx, erased_rx) = mpsc::unbounded_channel();
        let state = jetstream::until_answered(&mirror.bucket, || {
            jetstream::StateMirror::open(
                &opened.client,
                &mirror,
                senders.state.clone(),
                erased_tx.clone(),
                opened.stop.clone(),
            )
        })
        .await?;
        let lease_config = jetstream::LeaseConfig {
            replicas: options.replicas,
            ttl: LEASE_TTL,
            ..jetstream::LeaseConfig::with_prefix(&options.prefix)
        };
        let leases = jetstream::until_answered(&lease_config.bucket, || {
            jetstream::Leases::open(&opened.client, lease_config.clone())
        })
        .await?;
        let (copy_health, health) = watch::channel(opened.health.borrow().clone());
        tokio::spawn(merge_health(
            opened.health,
            copy_health.clone(),
            opened.stop.clone(),
        ));
        let source = replica::Source {
            stream: opened.stream,
            extent: opened.extent,
            head: opened.head,
            erased: cluster_erase::lookup(copy.local.state.clone()),
        };
        tokio::spawn(replica::follow(
            source,
            copy.local.log.clone(),
            senders.log,
            copy_health,
            opened.stop.clone(),
        ));
        let inner = Arc::new(Inner {
            backend: Backend::Cluster(Box::new(Cluster {
                log: opened.log,
                copy: copy.local,
                state,
                leases,
                erasing: Default::default(),
            })),
            head: copy.head,
            health,
            erasures: Default::default(),
            metrics: config.metrics.clone(),
        });
        tokio::spawn(cluster_erase::redact_applied(
            Arc::downgrade(&inner),
            erased_rx,
            opened.stop,
        ));
        Ok((Store { inner }, WriterHandle(copy.threads)))
    }
}

/// How long a lease lasts without renewal in cluster mode (see
/// [`Store::leases`]).
pub const LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// Carries the cluster's reachability (`log`, `state`) into `into`, beside
/// the copy's own problem, until `stop`.
async fn merge_health(
    mut cluster: watch::Receiver<StoreHealth>,
    into: watch::Sender<StoreHealth>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let now = cluster.borrow_and_update().clone();
        into.send_if_modified(|h| {
            let changed = h.log != now.log || h.state != now.state;
            h.log = now.log;
            h.state = now.state;
            changed
        });
        tokio::select! {
            () = stop.cancelled() => return,
            r = cluster.changed() => if r.is_err() { return },
        }
    }
}

/// sled's settings for the state at `path`; `rewrite_state` creates its
/// fresh copy with the same ones.
pub(super) fn sled_config(path: &Path, cache_bytes: u64) -> sled::Config {
    sled::Config::new()
        .path(path)
        .cache_capacity(cache_bytes)
        // Each group commit flushes and fsyncs itself; the periodic
        // flusher stays on as sled's own safety net.
        .flush_every_ms(Some(500))
        // Large segments keep ordinary events out of sled's blob
        // files, which sled writes without fsync (the writer syncs
        // any that do appear, see `writer::sync_blobs`).
        .segment_size(8 * 1024 * 1024)
}

/// Creates the data directory readable by its owner only (0700: without
/// a master key it holds signing secrets and header credentials in the
/// clear), and warns when an existing one is open to group or others.
fn create_private_dir(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)?;
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = %format!("{mode:o}"),
                "the data directory is accessible to other users; it holds endpoint secrets \
                 (in the clear without a master key): chmod 700 it"
            );
        }
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(path)?;
    Ok(())
}

/// sled's errors as the crate's: its I/O errors keep their kind (a full
/// disk is `RESOURCE_EXHAUSTED`, as for the log), the rest their text.
impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(e) => Error::Io(e),
            other => Error::Storage(other.to_string()),
        }
    }
}

/// How long [`open_sled`] waits for sled's lock on its data file.
pub(super) const SLED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Opens sled, waiting up to [`SLED_LOCK_WAIT`] for its lock on the data
/// file. sled releases the lock when its last I/O thread lets go of the
/// file, which can be a moment after the last `Db` handle is dropped: a
/// store reopened in the same process (a restart in the tests) could
/// otherwise fail with "could not acquire lock" under load. Another
/// process holding the directory still fails, after the wait.
pub(super) fn open_sled(config: sled::Config, path: &Path) -> Result<sled::Db> {
    let deadline = std::time::Instant::now() + SLED_LOCK_WAIT;
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                return Err(Error::FailedPrecondition(format!(
                    "another broker (or process) holds the data directory {}: stop it, or \
                     give this one its own data_dir",
                    path.display()
                )));
            }
            result => return Ok(result?),
        }
    }
}

/// sled 0.34 writes a snapshot to `snap.<lsn>.generating`, fsyncs it and
/// renames it to `snap.<lsn>`. A crash before the rename leaves the
/// `.generating` file behind, and sled's recovery then picks it (its name
/// sorts last), finds it empty or torn, and refuses to open the database
/// (sled issues #1527, #1533). Such a file is unfinished by construction;
/// the previous snapshot and the log hold everything, so it is removed.
pub(super) fn remove_unfinished_snapshots(dir: &Path) -> Result<()> {
    let mut removed = false;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            std::fs::remove_file(entry.path())?;
            tracing::warn!(file = %name, "removed an unfinished sled snapshot left by a crash");
            removed = true;
        }
    }
    if removed {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The event log's directory inside the data directory.
pub(super) const LOG_DIR: &str = "events";

/// The sled data file, fsync'd after every group commit.
fn data_file(path: &Path) -> PathBuf {
    path.join("db")
}
