"""Prometheus metrics, one registry per app (so tests and several apps never collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: A whole request may run to the request deadline (600 s by default).
REQUEST_BUCKETS = (*LATENCY_BUCKETS, 60.0, 120.0, 300.0, 600.0)
TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
SEQUENCE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # The process's CPU, memory, open files and start time (process_*; Linux only) and the
        # Python version (python_info), on this registry rather than the global one.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.requests = Counter("gigarouter_requests", "HTTP requests by route, status and model",
                                ["route", "status", "model"], registry=r)
        self.request_seconds = Histogram("gigarouter_request_seconds", "End-to-end HTTP request time, from the "
                                         "first byte in to the last byte out, by route and model",
                                         ["route", "model"], buckets=REQUEST_BUCKETS, registry=r)
        self.tokens = Counter("gigarouter_tokens", "Tokens embedded, by model", ["model"], registry=r)
        self.queue_tokens = Gauge("gigarouter_queue_tokens", "Tokens waiting in the scheduler queue",
                                  ["model"], registry=r)
        self.queue_sequences = Gauge("gigarouter_queue_sequences", "Sequences waiting in the scheduler queue",
                                     ["model"], registry=r)
        self.batch_tokens = Histogram("gigarouter_batch_tokens", "Tokens per forward pass", ["model"],
                                      buckets=TOKEN_BUCKETS, registry=r)
        self.batch_sequences = Histogram("gigarouter_batch_sequences", "Sequences per forward pass", ["model"],
                                         buckets=SEQUENCE_BUCKETS, registry=r)
        self.stage_seconds = Histogram("gigarouter_stage_seconds", "Per-request time in each stage",
                                       ["stage", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.dropped = Counter("gigarouter_dropped_sequences", "Sequences dropped because the client left",
                               ["model"], registry=r)
        self.rejected = Counter("gigarouter_rejected_requests", "Requests refused because the queue was full",
                                ["model"], registry=r)
        # The router: per model and provider.
        self.provider_requests = Counter("gigarouter_provider_requests", "Provider calls by model, provider and "
                                         "outcome (ok or error)", ["model", "provider", "outcome"], registry=r)
        self.provider_failovers = Counter("gigarouter_provider_failovers", "Requests moved to the next provider "
                                          "after this one failed", ["model", "provider"], registry=r)
        self.provider_seconds = Histogram("gigarouter_provider_seconds", "Time a provider took to answer",
                                          ["model", "provider"], buckets=LATENCY_BUCKETS, registry=r)
        self.usage_disagreements = Counter("gigarouter_usage_disagreements", "Responses whose upstream usage "
                                           "differs from our token count", ["model", "provider"], registry=r)
        # The per-input embedding cache (router/cache.py), per model.
        self.cache_hits = Counter("gigarouter_cache_hits", "Inputs answered without computing them: from the "
                                  "cache, from an identical input in flight, or a duplicate in the same request",
                                  ["model"], registry=r)
        self.cache_misses = Counter("gigarouter_cache_misses", "Inputs computed by a provider (each distinct "
                                    "input once)", ["model"], registry=r)
        self.cache_hit_tokens = Counter("gigarouter_cache_hit_tokens", "Tokens answered without computing them",
                                        ["model"], registry=r)
        self.cache_bytes = Gauge("gigarouter_cache_bytes", "Bytes the cache holds (memory and file stores)",
                                 ["model"], registry=r)
        self.cache_evictions = Counter("gigarouter_cache_evictions", "Entries evicted to stay within the bound "
                                       "(memory and file stores)", ["model"], registry=r)
        self.cache_errors = Counter("gigarouter_cache_errors", "Cache store failures, answered as misses "
                                    "(op: get or set)", ["model", "op"], registry=r)
        self.out_of_memory = Counter("gigarouter_out_of_memory_batches",
                                     "Forward passes the device ran out of memory on (a batch is retried in halves)",
                                     ["model"], registry=r)
