//! When the operator may call the Dynatrace API again (spec §1.6 `dynatrace-api-request-threshold`): token
//! scopes, connection info and versions are looked up at most once per threshold, so that a busy
//! reconcile loop does not hammer the environment.
//!
//! Times are unix seconds: the caller reads the clock once per reconcile and passes it in.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// A status time stamp as unix seconds.
pub fn unix_seconds(time: &Time) -> i64 {
    time.0.as_second()
}

/// Whether a request last made at `last_request` (unix seconds) may be made again at `now`: never made,
/// or at least `threshold_minutes` ago (a threshold of 0 allows every call).
///
/// A time stamp in the future also allows the call: it means a clock jumped (or another replica's clock
/// is ahead), and waiting for the clock to catch up could block updates for arbitrarily long. The call
/// writes a fresh time stamp, so this happens once.
pub fn request_due(last_request: Option<i64>, now: i64, threshold_minutes: u32) -> bool {
    let Some(last) = last_request else {
        return true;
    };
    let elapsed = now.saturating_sub(last);
    elapsed < 0 || elapsed >= i64::from(threshold_minutes) * 60
}

/// When a request made at `last_request` may be made again (unix seconds).
pub fn next_request_at(last_request: i64, threshold_minutes: u32) -> i64 {
    last_request.saturating_add(i64::from(threshold_minutes) * 60)
}

/// Whether the connection info must be requested again (spec §8): the tenant-token Secret is missing,
/// or `status.oneAgent.connectionInfoStatus.lastRequest` is older than the threshold. `lastRequest` is
/// only written when communication hosts were received, so an answer without hosts is retried.
pub fn connection_info_due(
    tenant_secret_exists: bool,
    last_request: Option<i64>,
    now: i64,
    threshold_minutes: u32,
) -> bool {
    !tenant_secret_exists || request_due(last_request, now, threshold_minutes)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    const NOW: i64 = 1_700_000_000;

    #[test]
    fn due_without_a_previous_request() {
        assert!(request_due(None, NOW, 15));
        assert!(request_due(None, NOW, 0));
    }

    #[test]
    fn due_once_the_threshold_has_passed() {
        assert!(!request_due(Some(NOW), NOW, 15));
        assert!(!request_due(Some(NOW - 15 * 60 + 1), NOW, 15));
        assert!(request_due(Some(NOW - 15 * 60), NOW, 15), "exactly the threshold");
        assert!(request_due(Some(NOW - 16 * 60), NOW, 15));
        assert!(!request_due(Some(NOW - 59), NOW, 1));
        assert!(request_due(Some(NOW - 60), NOW, 1));
    }

    #[test]
    fn zero_threshold_allows_every_call() {
        assert!(request_due(Some(NOW), NOW, 0));
    }

    #[test]
    fn a_time_stamp_from_the_future_allows_the_call() {
        assert!(request_due(Some(NOW + 1), NOW, 15));
        assert!(request_due(Some(i64::MAX), i64::MIN, 15), "no overflow");
        assert!(request_due(Some(i64::MIN), i64::MAX, u32::MAX), "no overflow");
    }

    #[test]
    fn next_request_time() {
        assert_eq!(next_request_at(NOW, 15), NOW + 900);
        assert_eq!(next_request_at(i64::MAX, 15), i64::MAX);
    }

    #[test]
    fn connection_info_when_secret_missing_or_outdated() {
        assert!(connection_info_due(false, Some(NOW), NOW, 15), "secret missing");
        assert!(!connection_info_due(true, Some(NOW - 60), NOW, 15), "fresh");
        assert!(connection_info_due(true, Some(NOW - 900), NOW, 15), "outdated");
        assert!(connection_info_due(true, None, NOW, 15), "never received hosts");
    }

    #[test]
    fn status_time_as_unix_seconds() {
        let time = Time(Timestamp::from_second(NOW).unwrap());
        assert_eq!(unix_seconds(&time), NOW);
        let time: Time = serde_json::from_str("\"2023-11-14T22:13:20Z\"").unwrap();
        assert_eq!(unix_seconds(&time), NOW);
    }
}
