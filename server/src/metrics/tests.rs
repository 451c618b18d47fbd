use super::*;

const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0;q=0.5,\
     application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";

fn record(ttft: Option<f64>, tpot: Option<f64>, e2e: f64) -> RequestRecord {
    RequestRecord {
        ttft,
        tpot,
        e2e,
        prompt_tokens: 3,
        generation_tokens: 5,
        n: 2,
        best_of: 3,
    }
}

#[test]
fn buckets_follow_vllms_1_2_5_rule() {
    assert_eq!(buckets_1_2_5(100), [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]);
    assert_eq!(buckets_1_2_5(4096).last(), Some(&2000.0));
    assert!(buckets_1_2_5(0).is_empty());
    assert_eq!(buckets_1_2_5(u64::MAX).len(), 58);
}

#[test]
fn histograms_are_cumulative() {
    let m = Metrics::new("demo");
    m.record(&record(Some(0.003), Some(0.02), 1.5));
    m.record(&record(None, None, 70.0));
    let (text, kind) = m.render(None);
    assert_eq!(kind, TEXT_TYPE);
    for line in [
        "vllm:time_to_first_token_seconds_bucket{le=\"0.001\",model_name=\"demo\"} 0",
        "vllm:time_to_first_token_seconds_bucket{le=\"0.005\",model_name=\"demo\"} 1",
        "vllm:time_to_first_token_seconds_count{model_name=\"demo\"} 1",
        "vllm:e2e_request_latency_seconds_bucket{le=\"2.5\",model_name=\"demo\"} 1",
        "vllm:e2e_request_latency_seconds_bucket{le=\"+Inf\",model_name=\"demo\"} 2",
        "vllm:e2e_request_latency_seconds_sum{model_name=\"demo\"} 71.5",
        "vllm:request_params_n_bucket{le=\"1.0\",model_name=\"demo\"} 0",
        "vllm:request_params_n_bucket{le=\"2.0\",model_name=\"demo\"} 2",
        "vllm:request_params_best_of_bucket{le=\"5.0\",model_name=\"demo\"} 2",
        "vllm:num_requests_running{model_name=\"demo\"} 0.0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from\n{text}"
        );
    }
}

#[test]
fn the_two_formats_name_families_as_prometheus_client_does() {
    let m = Metrics::new("demo");
    m.set_throughput(12.5, 3.0);
    let (open, kind) = m.render(Some(PROMETHEUS_ACCEPT));
    assert_eq!(kind, OPENMETRICS_TYPE);
    assert!(open.ends_with("# EOF\n"), "{open}");
    assert!(open.contains("# TYPE vllm:prompt_tokens counter\n"));
    assert!(open.contains("\nvllm:prompt_tokens_total{model_name=\"demo\"} 0\n"));
    assert!(open.contains("\nvllm:avg_prompt_throughput_toks_per_s{model_name=\"demo\"} 12.5\n"));
    let (text, kind) = m.render(Some("text/plain"));
    assert_eq!(kind, TEXT_TYPE);
    assert!(!text.contains("# EOF"));
    assert!(text.contains("# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n"));
    assert!(text.contains("# TYPE vllm:prompt_tokens_total counter\n"));
    assert!(text.contains("# TYPE vllm:request_success_total counter\n"));
    assert!(text.contains(
        "\nvllm:request_success_total{finished_reason=\"length\",model_name=\"demo\"} 0\n"
    ));
    assert!(!text.contains("finished_reason=\"abort\""), "{text}");
    assert!(text.contains("# TYPE vllm:time_to_first_token_seconds histogram\n"));
    assert!(text.contains("# HELP vllm:request_params_n Histogram of the n request parameter.\n"));
    // Samples are the same lines in both.
    let samples = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| !l.starts_with('#'))
            .map(String::from)
            .collect()
    };
    assert_eq!(samples(&open), samples(&text));
}

#[test]
fn an_info_becomes_a_gauge_in_the_classic_format() {
    let open = "# HELP vllm:cache_config information of cache_config\n\
                # TYPE vllm:cache_config info\n\
                vllm:cache_config_info{block_size=\"16\"} 1\n\
                # HELP x_seconds X.\n# TYPE x_seconds counter\n# UNIT x_seconds seconds\n\
                x_seconds_total 2\n# EOF\n";
    assert_eq!(
        openmetrics_to_text(open),
        "# HELP vllm:cache_config_info information of cache_config\n\
         # TYPE vllm:cache_config_info gauge\n\
         vllm:cache_config_info{block_size=\"16\"} 1\n\
         # HELP x_seconds_total X.\n# TYPE x_seconds_total counter\n\
         x_seconds_total 2\n"
    );
}

#[test]
fn label_values_are_escaped() {
    let m = Metrics::new("a\"b\\c\nd");
    let (text, _) = m.render(None);
    assert!(
        text.contains("vllm:num_requests_running{model_name=\"a\\\"b\\\\c\\nd\"} 0.0"),
        "{text}"
    );
}

#[test]
fn cache_config_reads_like_pythons_str() {
    let labels = cache_config_labels(16, "auto", 0.9, false, 128, None);
    let get = |k: &str| labels.iter().find(|(n, _)| n == k).unwrap().1.clone();
    assert_eq!(get("block_size"), "16");
    assert_eq!(get("gpu_memory_utilization"), "0.9");
    assert_eq!(get("enable_prefix_caching"), "False");
    assert_eq!(get("num_gpu_blocks"), "128");
    assert_eq!(get("num_gpu_blocks_override"), "None");
    let labels = cache_config_labels(16, "auto", 1.0, true, 8, Some(8));
    assert!(labels.contains(&("gpu_memory_utilization".into(), "1.0".into())));
    assert!(labels.contains(&("num_gpu_blocks_override".into(), "8".into())));
}

#[test]
fn openmetrics_only_when_asked_for() {
    assert!(wants_openmetrics(Some(PROMETHEUS_ACCEPT)));
    assert!(wants_openmetrics(Some("application/openmetrics-text")));
    assert!(!wants_openmetrics(Some("text/plain;version=0.0.4")));
    assert!(!wants_openmetrics(Some("*/*")));
    assert!(!wants_openmetrics(None));
}
