// JetStream transport: at-least-once delivery through a NATS JetStream stream, in its own library
// target notifications::jetstream (it uses the NATS transport's connection: linking it links
// notifications::nats). Linking it registers the "jetstream" URL scheme with make_transport().
//
// Delivery guarantee: a message counts as published (PublishResult::published) only once the
// server acknowledged that the stream stored it; Message::id is the server's dedupe id
// (Nats-Msg-Id), so publishing it again within duplicate_window stores nothing new (counted as
// "duplicates"). A batch that was not fully acknowledged reports the acknowledged prefix, and the
// caller (the Bridge) publishes the rest again: after a reconnect, a server restart, a timeout.
// Each subscription reads through a JetStream consumer with explicit acknowledgements: a delivery
// that is not acked within ack_wait, or is nak'ed, is delivered again (Delivery::redelivery
// counts); after max_deliveries the server gives it up. With the Bridge's inbox (durable
// handlers) each handler runs once per event.
//
// Order: a publisher's messages of one subject are stored, and delivered, in publish order, also
// across a broken connection: the connection writes each publish at once (send_asap) and buffers
// nothing while reconnecting (reconnect_buffer_bytes 0, whatever JetStreamOptions::connection
// says), so a batch that meets a broken connection stops there and is sent again, in order, once
// the connection is back. A nak'ed message may come after later ones (nak_may_be_overtaken).
//
// Provisioning (start()): with provision "create" (the default) the stream is created, or updated
// to these options when it exists (subjects, duplicate window, limits); with "verify" it is only
// read (credentials that deny the JetStream API's create calls), and start() fails with a
// TransportError naming the stream and what is missing (the stream, or subjects it does not
// cover). Subjects that overlap another stream's are reported as such, never merged.
//
// Consumers: pull consumers, one fetching thread per subscription (the transport's own thread,
// not cnats': the DeliveryHandler runs there and must only enqueue). It sends the pull requests
// itself and reads the answers from its own inbox subscription (cnats 3.4.1's fetch holds a lone
// message until its batch is full or its wait is over, and can write past its array).
// DeliveryOptions::durable names a durable consumer (created when missing, kept at unsubscribe
// and stop; the same name with another pattern is refused at subscribe, naming "durable");
// DeliveryOptions::group without durable is a durable consumer named after the group and the
// pattern, shared by the group's members; neither: an ephemeral consumer, removed at unsubscribe
// (and by the server after inactive_threshold when the process is gone), created again from the
// next stream sequence when the server lost it. start positions, ack_wait, max_deliveries and ordered (max ack pending
// 1) are consumer settings. A durable consumer created earlier keeps its position and its own
// settings: its start position, ack_wait and max_deliveries are those of its creation. Fetching
// resumes after a reconnect by itself (every fetch is a new pull request).
// With consumer_type push, the server pushes instead: the consumer is created with a deliver
// subject (this subscription's inbox; the group's members queue-subscribe to it, as deliver
// group), flow control and idle heartbeats (idle_heartbeat; none with a deliver group, which the
// server does not allow), and the same thread reads and hands over what arrives. An existing
// durable push consumer is read through its own deliver subject; a pull consumer of that name is
// refused, naming it, and so is a push consumer for a pull subscription. When nothing, not even a
// heartbeat, came for twice idle_heartbeat, the consumer is asked for, and made again when the
// server lost it. No more_follows hint in push mode.
//
// Settle: ack, nak (with a delay: NakWithDelay), term, in_progress, from any thread. A settle after
// the subscription was closed (unsubscribe, stop, fork) does nothing; the server delivers the
// message again after ack_wait (counted: "unsettled_at_close").
//
// stop(deadline): stops fetching (each fetch thread lets its pull request in flight end, within
// fetch_wait; one still running at the deadline is cut short: "requests_cut_short"), closes the
// subscriptions (ephemeral consumers are removed, durable ones kept), waits for the last publish
// acknowledgements, then stops the NATS connection as the NATS transport does (flush, drain).
//
// Capabilities (kJetStreamCapabilities; capabilities() adds dedupe_window = duplicate_window):
// persistent, exactly_once (within the dedupe window), ordered, consumer_groups, acknowledgements,
// needs_server, durable_consumers, start_positions, nak_may_be_overtaken, ordered_delivery_option.
//
// URL: jetstream://[user:password@|token@]host[:port][,host[:port]...][?key=value&...]. The
// connection keys are the NATS transport's (NatsOptions, same names); the JetStream keys are the
// fields of JetStreamOptions below (durations with an "_ms" suffix). Unknown keys and bad values
// throw TransportError naming them; credentials never appear in errors, logs or health().
//
// health(): the NATS transport's fields (connection, server, disconnects, ...) plus stream,
// provision, provisioned, published (acknowledged), duplicates, publish_failed (negative
// acknowledgements), publish_timeouts (batches not fully acknowledged in time), acks_pending,
// stream_messages, stream_bytes, last_sequence (-1 when the server did not answer within 200 ms),
// pull_requests, fetch_errors, delivered, redelivered, acked, naked, terminated, in_progress,
// settle_errors, unsettled_at_close, not_handed_at_close (fetched while closing: the server
// delivers them again), requests_cut_short, consumers_recreated, last_error, and
// "subscriptions": per subscription its pattern, consumer, durable, pending, ack_pending,
// redelivered (the server's figures, -1 when it did not answer).
//
// Fork: as the NATS transport (notifications/fork.hpp): prepare_fork stops the fetch threads and
// closes the connection, after_fork opens it again and resumes every subscription: the parent
// through its same consumers (ephemeral ones are kept across fork), a child through new ephemeral
// consumers that start after their acknowledgement floors.
//
// Thread-safety: as every Transport, all members may be called from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "notifications/transport.hpp"
#include "notifications/transports/nats.hpp"

namespace notifications {

inline constexpr TransportCapabilities kJetStreamCapabilities{.persistent = true,
                                                              .exactly_once = true,
                                                              .ordered = true,
                                                              .consumer_groups = true,
                                                              .acknowledgements = true,
                                                              .needs_server = true,
                                                              .durable_consumers = true,
                                                              .start_positions = true,
                                                              .nak_may_be_overtaken = true,
                                                              .ordered_delivery_option = true};

// Thread-safety: a plain value.
struct JetStreamOptions {
  // Servers, credentials, TLS, reconnects (the NATS transport's keys); send_asap and
  // reconnect_buffer_bytes are set by the transport (see "Order" above).
  NatsOptions connection;

  // The stream: its name (letters, digits, '-', '_') and the subjects it stores (NATS wildcards).
  std::string stream = "NOTIFICATIONS";
  std::vector<std::string> subjects{"notifications.>"};
  enum class Provision { create, verify };
  Provision provision = Provision::create;
  bool file_storage = true;  // false: memory storage (lost with the server)
  int replicas = 1;          // 1 to 5; a cluster keeps this many copies
  std::chrono::milliseconds duplicate_window{120'000};  // the server's dedupe memory of Message::id
  std::chrono::milliseconds max_age{0};                 // 0: kept until the other limits
  std::int64_t max_messages = -1;                       // -1: no limit
  std::int64_t max_bytes = -1;                          // -1: no limit

  // Publishing: at most this many publishes wait for the server's acknowledgement at once, and a
  // batch waits at most publish_timeout for all of its acknowledgements.
  int max_pending_acks = 4096;
  std::chrono::milliseconds publish_timeout{5'000};
  // JetStream API calls (stream and consumer info, creation) wait at most this long.
  std::chrono::milliseconds api_timeout{5'000};

  // Consuming: each pull request asks for up to fetch_batch messages and waits at most fetch_wait;
  // a message is handed over as soon as it arrives.
  int fetch_batch = 256;
  std::chrono::milliseconds fetch_wait{500};
  int max_waiting = 512;  // pull requests a consumer holds at once (members of a group share it)
  // How subscriptions read: pull requests (the default), or a push consumer (see "Consumers").
  enum class ConsumerType { pull, push };
  ConsumerType consumer_type = ConsumerType::pull;
  // Push consumers: the server's heartbeat interval while it has nothing to deliver (at least 100).
  std::chrono::milliseconds idle_heartbeat{5'000};
  // Consumer defaults where DeliveryOptions leaves them at zero.
  std::chrono::milliseconds ack_wait{30'000};
  std::uint32_t max_deliveries = 0;  // 0: no limit
  // How long the server keeps an ephemeral consumer whose process is gone.
  std::chrono::milliseconds inactive_threshold{60'000};
};

// A JetStream transport, not started. Throws TransportError for invalid options.
std::unique_ptr<Transport> make_jetstream_transport(JetStreamOptions options);

// The options that make_transport() uses for a "jetstream://" URL and config.options. Throws
// TransportError naming the URL (credentials redacted) and the bad key or value.
JetStreamOptions jetstream_options_from_config(const TransportConfig& config);

// Registers the "jetstream" scheme. Linking notifications::jetstream does this before main();
// calling it again is harmless.
void register_jetstream_transport();

}  // namespace notifications
