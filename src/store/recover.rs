//! What opening checks and repairs before the store takes writes: the
//! state against the log's head, events left in sled trees by old
//! versions, and a background scrub of the sealed segments.

use super::*;

/// Checks the sealed segments' records in the background: opening read
/// only their `.idx` files, so damage there (the disk changing bytes) is
/// found here and reported with file and byte, not first by a reader.
/// Reads of a damaged record fail alone, with DATA_LOSS.
pub(super) fn scrub(log: Arc<EventLog>, metrics: Arc<Metrics>) -> Result<()> {
    std::thread::Builder::new()
        .name("stevedore-scrub".into())
        .spawn(move || match log.scrub() {
            Ok(damaged) => {
                for (offset, why) in &damaged {
                    tracing::error!(offset = offset.get(), error = %why, "event log: a record is damaged");
                }
                metrics
                    .damaged_records
                    .fetch_add(damaged.len() as u64, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(damaged = damaged.len(), "event log: scrub done");
            }
            Err(e) => tracing::error!(error = %e, "event log: the scrub could not read the log"),
        })?;
    Ok(())
}

/// State may only refer to durable events, so none of it may lie at or
/// above the log's head: if some does, the log lost acknowledged records
/// (damage cut with `recovery = "truncate"`, or files removed by hand).
/// Refused, unless the operator chose truncation: then consumer positions
/// come down to the head and delivery records above it go (offsets are
/// given out again, and a new event must not look done or delivered).
pub(super) fn check_state_against_head(
    tables: &Tables,
    head: Offset,
    recovery: Recovery,
) -> Result<()> {
    let above = |what: String| {
        Error::Corrupt(format!(
            "{what}, but the event log ends below it (next offset {head}): acknowledged events \
             are missing from the log. Restore the data directory from a backup, or set \
             recovery = \"truncate\" to move that state back to the log's end"
        ))
    };
    let consumers = tables.get(Table::Consumers);
    let mut fixes = Vec::new();
    for kv in consumers.iter() {
        let (name, value) = kv?;
        let mut record: ConsumerRecord = prost::Message::decode(&*value)
            .map_err(|e| Error::Corrupt(format!("consumer record: {e}")))?;
        // The stored record's own encoding: offsets as numbers.
        let head = head.get();
        let highest = record
            .done_ranges
            .last()
            .copied()
            .unwrap_or(0)
            .max(record.floor);
        if highest <= head {
            continue;
        }
        let name = String::from_utf8_lossy(&name).into_owned();
        if recovery == Recovery::Refuse {
            return Err(above(format!(
                "consumer {name:?} has done offsets up to {highest}"
            )));
        }
        record.floor = record.floor.min(head);
        let ranges = std::mem::take(&mut record.done_ranges);
        for pair in ranges.chunks_exact(2) {
            let (start, end) = (pair[0], pair[1].min(head));
            if start < end {
                record.done_ranges.extend([start, end]);
            }
        }
        record.reopened.retain(|&o| o < head);
        tracing::error!(consumer = %name, from = highest, to = head, "recovery: moved a consumer back to the log's end");
        fixes.push((name, prost::Message::encode_to_vec(&record)));
    }
    for (name, value) in fixes {
        consumers.insert(name.as_bytes(), value)?;
    }
    let (deliveries, attempts) = (tables.get(Table::Deliveries), tables.get(Table::Attempts));
    for id in tables.get(Table::Endpoints).iter().keys() {
        let id = String::from_utf8_lossy(&id?).into_owned();
        let from = keys::scoped_offset_key(&id, head);
        let Some((last, _)) = deliveries
            .scan_prefix(keys::scope(&id))
            .next_back()
            .transpose()?
        else {
            continue;
        };
        if last.as_ref() < from.as_slice() {
            continue;
        }
        if recovery == Recovery::Refuse {
            let offset = keys::decode_offset(&last[last.len() - 8..])?;
            return Err(above(format!(
                "endpoint {id:?} has a delivery record at offset {offset}"
            )));
        }
        let end = keys::scoped_offset_key(&id, Offset::MAX);

        for table in [deliveries, attempts] {
            for k in table.range(from.clone()..=end.clone()).keys() {
                table.remove(k?)?;
            }
        }
        tracing::error!(endpoint = %id, from = head.get(), "recovery: removed delivery records above the log's end");
    }
    Ok(())
}

/// Data directories written before the event log kept events in sled
/// trees. Copies them into a new log, built beside it and renamed into
/// place once durable, then drops the trees: a crash at any point leaves
/// either the trees or the complete log.
pub(super) fn migrate_sled_events(
    db: &sled::Db,
    log_dir: &Path,
    options: LogOptions,
) -> Result<()> {
    let building = log_dir.with_extension("migrating");
    if building.exists() {
        std::fs::remove_dir_all(&building)?;
    }
    let has = |name: &str| db.tree_names().iter().any(|n| &n[..] == name.as_bytes());
    if !has(keys::LEGACY_EVENTS_TREE) {
        return Ok(());
    }
    let events = db.open_tree(keys::LEGACY_EVENTS_TREE)?;
    if !log_dir.exists() {
        let first = match events.first()? {
            Some((k, _)) => keys::decode_offset(&k)?,
            None => FIRST_OFFSET,
        };
        std::fs::create_dir_all(&building)?;
        log::write_start_file(&*options.fs, &building, first)?;
        let (_, mut writer) = EventLog::open(&building, options)?;
        let mut n = 0u64;
        for kv in events.iter() {
            let (k, v) = kv?;
            let offset = keys::decode_offset(&k)?;
            let id = keys::decode_event_id(offset, &v)?;
            if writer.needs_roll(log::LogWriter::frame_len(v.len())) {
                writer.commit()?;
                writer.roll()?;
            }
            let at = writer.append_parts(&id, &[&v])?;
            if at != offset {
                return Err(Error::Corrupt(format!(
                    "migrating events: offset {offset} is not contiguous (expected {at})"
                )));
            }
            n += 1;
            if n.is_multiple_of(4096) {
                writer.commit()?;
            }
        }
        writer.commit()?;
        drop(writer);
        std::fs::rename(&building, log_dir)?;
        std::fs::File::open(log_dir.parent().unwrap_or(Path::new(".")))?.sync_all()?;
        tracing::warn!(
            events = n,
            "moved the events from sled trees into the event log"
        );
    }
    drop(events);
    db.drop_tree(keys::LEGACY_EVENTS_TREE)?;
    db.drop_tree(keys::LEGACY_EVENT_IDS_TREE)?;
    db.flush()?;
    Ok(())
}
