//! Settings: disabled, defaults, validation and settings files.

use super::*;
use crate::testing::problems;

#[tokio::test(start_paused = true)]
async fn a_disabled_breaker_never_trips() {
    let mut h = Harness::new(users_with(BreakerSettings {
        enabled: false,
        volume_threshold: 1,
        ..BreakerSettings::default()
    }));
    // (In batches under Tokio's cooperative budget: the test never yields.)
    h.send_n(50, || status(500));
    tokio::task::yield_now().await;
    h.send_n(50, reset);
    tokio::time::advance(secs(5)).await;
    h.send_n(50, || status(503));
    assert_eq!(h.state(), BreakerState::Closed);
    assert_eq!(h.handle.transitions(), 0);
    assert_eq!(h.backend.calls(), 150, "every request reached the backend");
}

#[test]
fn the_default_settings_are_valid() {
    assert_eq!(BreakerSettings::default().validate(), Ok(()));
    let layer = users();
    assert_eq!(layer.settings(), &BreakerSettings::default());
}

#[test]
fn each_bad_value_is_refused_at_its_field() {
    let bad = |change: &dyn Fn(&mut BreakerSettings)| {
        let mut settings = BreakerSettings::default();
        change(&mut settings);
        problems(settings.validate())
    };
    for t in [0.0, -0.5, 1.5, f64::NAN, f64::INFINITY] {
        assert_eq!(
            bad(&|s| s.error_threshold = t),
            [format!(
                "error_threshold: must be greater than 0 and at most 1, got {t}"
            )],
        );
    }
    assert_eq!(
        bad(&|s| s.half_open_probes = 0),
        ["half_open_probes: must be at least 1"],
    );
    assert_eq!(
        bad(&|s| s.window = Duration::ZERO),
        ["window: must be greater than 0"],
    );
    // The edges are fine.
    let edges = BreakerSettings {
        enabled: false,
        window: Duration::from_nanos(1),
        volume_threshold: 0,
        error_threshold: 1.0,
        sleep_window: Duration::ZERO,
        half_open_probes: 1,
    };
    assert_eq!(edges.validate(), Ok(()));
}

#[test]
fn several_bad_values_give_several_problems() {
    let err = BreakerLayer::new(
        "users",
        BreakerSettings {
            window: Duration::ZERO,
            error_threshold: 2.0,
            half_open_probes: 0,
            ..BreakerSettings::default()
        },
    )
    .unwrap_err();
    let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["window", "error_threshold", "half_open_probes"]);
    assert_eq!(
        err.to_string(),
        "window: must be greater than 0; \
         error_threshold: must be greater than 0 and at most 1, got 2; \
         half_open_probes: must be at least 1"
    );
}

/// Settings files: durations as strings, unknown fields refused.
#[cfg(all(feature = "serde", feature = "file"))]
mod settings_files {
    use super::*;

    #[test]
    fn durations_are_strings_and_settings_round_trip() {
        let s: BreakerSettings = toml::from_str(
            "window = \"30s\"\nsleep_window = \"1m 30s\"\nerror_threshold = 0.25\nenabled = false",
        )
        .unwrap();
        assert_eq!(
            s,
            BreakerSettings {
                enabled: false,
                window: secs(30),
                error_threshold: 0.25,
                sleep_window: secs(90),
                ..BreakerSettings::default()
            }
        );
        let text = toml::to_string(&s).unwrap();
        assert!(text.contains("sleep_window = \"1m 30s\""), "{text}");
        assert_eq!(toml::from_str::<BreakerSettings>(&text).unwrap(), s);
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains(r#""window":"30s""#), "{json}");
        assert_eq!(serde_json::from_str::<BreakerSettings>(&json).unwrap(), s);
        assert_eq!(
            toml::from_str::<BreakerSettings>("").unwrap(),
            BreakerSettings::default()
        );
    }

    #[test]
    fn an_unknown_field_is_refused_by_name() {
        let err = toml::from_str::<BreakerSettings>("sleep_windw = \"1s\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `sleep_windw`"), "{err}");
        let err = serde_json::from_str::<BreakerSettings>(r#"{"treshold": 0.5}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `treshold`"), "{err}");
    }
}
