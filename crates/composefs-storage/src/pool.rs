//! The crate's one worker pool: scoped threads over a slice, for the commands that do
//! independent work per layer (image export, verification), and the one rule for what a
//! `jobs` option of 0 means. Streaming pipelines with their own channels (unpack, composefs
//! hashing) size themselves with [`threads`] too.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The number of threads a `jobs` option asks for: 0 is one per CPU (1 if unknown).
pub(crate) fn threads(jobs: usize) -> usize {
    match jobs {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// Runs `f` on every item on up to [`threads`]`(jobs)` scoped threads (never more than there
/// are items), taking items in order, and returns the results in the items' order. After the
/// first error no further item is started, and that error is returned; results of items
/// already done are dropped (so whatever they own is cleaned up).
pub(crate) fn try_map<T, R, E>(
    items: &[T],
    jobs: usize,
    f: impl Fn(&T) -> Result<R, E> + Sync,
) -> Result<Vec<R>, E>
where
    T: Sync,
    R: Send,
    E: Send,
{
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    let failed: Mutex<Option<E>> = Mutex::new(None);
    let workers = threads(jobs).clamp(1, items.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    if failed.lock().map_or(true, |f| f.is_some()) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { return };
                    match f(item) {
                        Ok(r) => {
                            if let Ok(mut v) = results.lock() {
                                v[i] = Some(r);
                            }
                        }
                        Err(e) => {
                            if let Ok(mut slot) = failed.lock() {
                                slot.get_or_insert(e);
                            }
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    Ok(results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .flatten()
        .collect())
}

/// [`try_map`] for work that cannot fail.
pub(crate) fn map<T: Sync, R: Send>(
    items: &[T],
    jobs: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    match try_map(items, jobs, |t| Ok::<R, std::convert::Infallible>(f(t))) {
        Ok(v) => v,
        Err(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_the_items_order() {
        let items: Vec<u32> = (0..100).collect();
        for jobs in [0, 1, 3, 200] {
            assert_eq!(
                map(&items, jobs, |x| x * 2),
                (0..100).map(|x| x * 2).collect::<Vec<_>>()
            );
        }
        assert!(map(&[] as &[u32], 0, |x| *x).is_empty());
    }

    #[test]
    fn an_error_stops_the_work() {
        let started = AtomicUsize::new(0);
        let items: Vec<u32> = (0..1000).collect();
        let r = try_map(&items, 2, |&x| {
            started.fetch_add(1, Ordering::Relaxed);
            if x == 5 {
                Err(format!("item {x}"))
            } else {
                Ok(x)
            }
        });
        assert_eq!(r, Err("item 5".to_string()));
        assert!(started.load(Ordering::Relaxed) < 1000);
    }

    #[test]
    fn zero_jobs_is_one_per_cpu() {
        assert!(threads(0) >= 1);
        assert_eq!(threads(3), 3);
    }
}
