// The NATS transport over cnats. Contract: include/notifications/transports/nats.hpp.
#include <nats/nats.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <regex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "nats_callbacks.hpp"
#include "nats_extension.hpp"
#include "notifications/fork.hpp"
#include "transport/kit.hpp"
#include "notifications/transports/nats.hpp"

namespace notifications {

void validate_nats_options(const NatsOptions& options);  // nats_options.cpp

namespace {

using namespace nats_detail;
using Clock = std::chrono::steady_clock;
using detail::LogLevel;

// stop() waits at most this long past its deadline for cnats to report the connection closed.
constexpr std::chrono::milliseconds kCloseGrace{200};
// Per reason (connection event kind and status), at most one log line per this interval.
constexpr std::chrono::seconds kLogInterval{1};
// No connection yet in any process generation.
constexpr std::uint64_t kNoGeneration = std::numeric_limits<std::uint64_t>::max();

std::int64_t millis_until(Deadline deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return std::max<std::int64_t>(left, 1);
}

// Connections of this library that are open in this process: cnats can be closed for a fork
// only when there are none.
std::atomic<int>& open_connections() {
  static std::atomic<int> count{0};
  return count;
}

// ---- the transport ------------------------------------------------------------------------

// Without send_asap, cnats' flusher thread, woken by the first unwritten publish, waits this long
// before it writes (a round trip takes about 1 ms at p50 with default buffering).
constexpr std::chrono::microseconds kFlusherDelay{1000};

// Message::id travels as this header (JetStream deduplicates on it), and comes back from it.
constexpr const char* kIdHeader = "Nats-Msg-Id";

// True when `m` is sent as a natsMsg with a header block: it has headers or an id.
bool has_header_block(const Message& m) { return !m.headers.empty() || !m.id.empty(); }

// The bytes a message takes against the server's max_payload: the body, plus cnats' header block
// ("NATS/1.0\r\n", "key: value\r\n" per header and for the id, "\r\n") when it is sent with headers.
std::size_t payload_bytes(const Message& m, bool with_headers) {
  std::size_t bytes = m.body.size();
  if (with_headers && has_header_block(m)) {
    bytes += 12;
    for (const auto& [key, value] : m.headers) bytes += key.size() + value.size() + 4;
    if (!m.id.empty()) bytes += std::char_traits<char>::length(kIdHeader) + m.id.size() + 4;
  }
  return bytes;
}

bool transient(natsStatus status) {
  switch (status) {
    case NATS_INSUFFICIENT_BUFFER:  // the reconnect buffer is full: the connection is down
    case NATS_NOT_YET_CONNECTED:
    case NATS_CONNECTION_DISCONNECTED:
    case NATS_IO_ERROR:
    case NATS_TIMEOUT:
    case NATS_NO_MEMORY:
    case NATS_STALE_CONNECTION:
      return true;
    default:
      return false;
  }
}

// Thread-safety: as every Transport, all members may be called from any thread (TransportBase
// serialises the lifecycle; cnats connections are thread-safe).
class NatsTransport final : public TransportBase {
 public:
  explicit NatsTransport(NatsOptions options) : options_(std::move(options)), scrub_({options_.password, options_.token}) {
    validate_nats_options(options_);
  }
  ~NatsTransport() override {
    try {
      stop(Clock::now() + std::chrono::seconds(5));
    } catch (...) {  // a destructor must not throw
    }
    if (forked_without_after_fork()) {
      // The log thread does not exist in this child: its handle is abandoned, not joined.
      (void)log_thread_.release();
      return;  // Shared stays: cnats' callbacks may still refer to it in the parent's image
    }
    shared_->release();
  }

  std::string kind() const override { return "nats"; }
  TransportCapabilities capabilities() const override {
    TransportCapabilities capabilities = kNatsCapabilities;
    if (!options_.send_asap) capabilities.write_delay = kFlusherDelay;
    return capabilities;
  }

  // See nats_extension.hpp.
  natsConnection* connection_for_extension() const {
    if (forked_without_after_fork()) return nullptr;
    detail::SharedMutexReadLock lock(connection_mutex_);
    return nc_;
  }

  // The server's max_payload, as learnt on the last (re)connect; 0 before the first connect,
  // after stop, and in a forked child.
  std::size_t max_message_bytes() const override {
    if (forked_without_after_fork()) return 0;
    refresh_link_info();
    return static_cast<std::size_t>(max_payload_.load(std::memory_order_relaxed));
  }

 protected:
  void do_start() override { connect(options_.retry_on_failed_connect); }

  // Connects (in the background when `retry_in_background` and no server answers yet) and starts
  // the log thread.
  void connect(bool retry_in_background) {
    natsOptions* opts = nullptr;
    check(natsOptions_Create(&opts), "creating options");
    struct OptionsGuard {
      natsOptions* o;
      ~OptionsGuard() { natsOptions_Destroy(o); }
    } guard{opts};
    std::vector<const char*> servers;
    for (const std::string& s : options_.servers) servers.push_back(s.c_str());
    check(natsOptions_SetServers(opts, servers.data(), static_cast<int>(servers.size())), "servers");
    if (!options_.user.empty()) {
      check(natsOptions_SetUserInfo(opts, options_.user.c_str(), options_.password.c_str()), "user");
    }
    if (!options_.token.empty()) check(natsOptions_SetToken(opts, options_.token.c_str()), "token");
    if (!options_.creds_file.empty()) {
      check(natsOptions_SetUserCredentialsFromFiles(opts, options_.creds_file.c_str(), nullptr),
            "creds_file \"" + options_.creds_file + "\"");
    }
    if (!options_.nkey_seed_file.empty()) {
      check(natsOptions_SetNKeyFromSeed(opts, options_.nkey_public.c_str(), options_.nkey_seed_file.c_str()),
            "nkey_seed_file \"" + options_.nkey_seed_file + "\"");
    }
    const bool tls = options_.tls || std::any_of(options_.servers.begin(), options_.servers.end(),
                                                 [](const std::string& s) { return s.rfind("tls://", 0) == 0; });
    if (tls) {
      check(natsOptions_SetSecure(opts, true), "tls");
      if (!options_.tls_ca_file.empty()) {
        check(natsOptions_LoadCATrustedCertificates(opts, options_.tls_ca_file.c_str()),
              "tls_ca_file \"" + options_.tls_ca_file + "\"");
      }
      if (!options_.tls_cert_file.empty()) {
        check(natsOptions_LoadCertificatesChain(opts, options_.tls_cert_file.c_str(), options_.tls_key_file.c_str()),
              "tls_cert_file \"" + options_.tls_cert_file + "\" / tls_key_file \"" + options_.tls_key_file + "\"");
      }
      if (!options_.tls_hostname.empty()) {
        check(natsOptions_SetExpectedHostname(opts, options_.tls_hostname.c_str()), "tls_hostname");
      }
    }
    check(natsOptions_SetName(opts, options_.name.c_str()), "name");
    check(natsOptions_SetMaxReconnect(opts, options_.max_reconnect), "max_reconnect");
    check(natsOptions_SetReconnectWait(opts, options_.reconnect_wait.count()), "reconnect_wait_ms");
    check(natsOptions_SetReconnectJitter(opts, options_.reconnect_jitter.count(), options_.reconnect_jitter.count()),
          "reconnect_jitter_ms");
    check(natsOptions_SetReconnectBufSize(opts, static_cast<int>(options_.reconnect_buffer_bytes)),
          "reconnect_buffer_bytes");
    check(natsOptions_SetPingInterval(opts, options_.ping_interval.count()), "ping_interval_ms");
    check(natsOptions_SetMaxPingsOut(opts, options_.max_pings_out), "max_pings_out");
    check(natsOptions_SetTimeout(opts, options_.connect_timeout.count()), "connect_timeout_ms");
    check(natsOptions_SetSendAsap(opts, options_.send_asap), "send_asap");
    check(natsOptions_SetNoEcho(opts, options_.no_echo), "no_echo");
    check(natsOptions_SetErrorHandler(opts, on_error, shared_), "error handler");
    check(natsOptions_SetClosedCB(opts, on_closed, shared_), "closed callback");
    check(natsOptions_SetDisconnectedCB(opts, on_disconnected, shared_), "disconnected callback");
    check(natsOptions_SetReconnectedCB(opts, on_reconnected, shared_), "reconnected callback");
    check(natsOptions_SetLameDuckModeCB(opts, on_lame_duck, shared_), "lame duck callback");
    if (retry_in_background) {
      check(natsOptions_SetRetryOnFailedConnect(opts, true, on_connected, shared_), "retry_on_failed_connect");
    }

    shared_->retain();  // the connection's reference, released by on_closed
    shared_->link.store(Shared::kLinkDown);
    shared_->reconnect_buffered_bytes.store(0);
    max_payload_.store(0);
    // Until a server tells: optimistic. A publish before the first connect falls back to the
    // body alone for that message (cnats refuses headers without a server's INFO).
    headers_.store(options_.headers);
    natsConnection* nc = nullptr;
    const natsStatus status = natsConnection_Connect(&nc, opts);
    if (status != NATS_OK && status != NATS_NOT_YET_CONNECTED) {
      shared_->release();  // no connection: no closed callback
      throw TransportError(describe_connect_failure(status));
    }
    if (status == NATS_OK) shared_->link.store(Shared::kLinkRefresh);
    {
      detail::SharedMutexWriteLock lock(connection_mutex_);
      nc_ = nc;
    }
    refresh_link_info();
    open_connections().fetch_add(1);
    generation_.store(detail::fork_generation());
    // Events reported before this thread runs wait in the queue.
    log_stop_.store(false);
    closing_.store(false);
    log_thread_ = std::make_unique<std::thread>([this] { run_log(); });
    if (status == NATS_NOT_YET_CONNECTED) {
      detail::log(LogLevel::warn, "notifications nats: no server reachable yet at {}; retrying in the background",
                  servers_text());
    } else {
      detail::log(LogLevel::info, "notifications nats: connected to {}", connected_url());
    }
  }

  // After a (re)connect: what this server allows (max_payload, headers). Cheap when nothing
  // changed (one load). Any thread; cnats is asked without the transport's locks.
  void refresh_link_info() const {
    if (shared_->link.load(std::memory_order_acquire) != Shared::kLinkRefresh) return;
    if (!connection_mutex_.try_lock_shared()) return;  // being replaced: the next call refreshes
    detail::SharedMutexReadLock lock(connection_mutex_, std::adopt_lock);
    if (nc_ == nullptr) return;
    if (natsConnection_Status(nc_) != NATS_CONN_STATUS_CONNECTED) return;
    int expected = Shared::kLinkRefresh;
    if (!shared_->link.compare_exchange_strong(expected, Shared::kLinkUp)) return;
    max_payload_.store(natsConnection_GetMaxPayload(nc_), std::memory_order_relaxed);
    if (natsConnection_HasHeaderSupport(nc_) == NATS_OK) {
      headers_.store(options_.headers, std::memory_order_relaxed);
    } else if (options_.headers) {
      headers_off();
    }
  }

  // The server of this connection has no headers: bodies alone until it changes. Asked again on
  // every batch meanwhile (the reconnected callback may run after the first publishes to the next
  // server), so headers return with the first batch the next server gets; that costs a few cnats
  // calls per batch, on such servers only.
  void headers_off() const {
    if (headers_.exchange(false, std::memory_order_relaxed)) {
      detail::log(LogLevel::warn, "notifications nats: the server does not support headers; publishing bodies only");
    }
    int expected = Shared::kLinkUp;
    shared_->link.compare_exchange_strong(expected, Shared::kLinkRefresh);
  }

  PublishResult do_publish(std::span<const Message> batch) override {
    if (forked_without_after_fork()) {
      return PublishResult{0, false, "nats: used in a forked child without notifications::after_fork(): "
                                     "cnats cannot cross fork()"};
    }
    natsConnection* nc = connection_unlocked();  // stable between do_start and do_stop, which never overlap publish
    if (nc == nullptr) return PublishResult{0, true, "nats: not connected"};
    // The connection this batch is written to, before the link: the disconnected callback sets
    // the link down first, so a link seen up belongs to this count or a later one.
    const std::uint64_t connection = shared_->disconnects.load(std::memory_order_acquire);
    // Once per batch: has the link changed since the last batch?
    const int link = shared_->link.load(std::memory_order_acquire);
    if (link == Shared::kLinkUp) [[likely]] {
      PublishResult result = publish_batch(nc, batch);
      if (result.published > 0) note_written_to_live(connection);
      return result;
    }
    if (link == Shared::kLinkRefresh) refresh_link_info();
    PublishResult result = publish_batch(nc, batch);
    if (link != Shared::kLinkDown && result.published > 0) note_written_to_live(connection);
    if (link == Shared::kLinkDown) {
      // What went to cnats' reconnect buffer (an estimate: its own size is not exposed).
      std::uint64_t bytes = 0;
      for (std::size_t i = 0; i < result.published; ++i) {
        bytes += batch[i].subject.size() + payload_bytes(batch[i], headers_.load()) + 16;
      }
      shared_->reconnect_buffered_bytes.fetch_add(bytes, std::memory_order_relaxed);
    }
    return result;
  }

  PublishResult publish_batch(natsConnection* nc, std::span<const Message> batch) {
    // 0 (unknown): no check here; cnats checks against what the server announced.
    const auto known_limit = static_cast<std::uint64_t>(max_payload_.load(std::memory_order_relaxed));
    const std::uint64_t limit = known_limit > 0 ? known_limit : std::numeric_limits<std::uint64_t>::max();
    // Published messages are destroyed in groups of kDestroyEvery: cnats hands each destroyed
    // natsMsg to its garbage-collector thread, and a group wakes that thread once instead of once
    // per message. The group bounds how many published messages are alive at once.
    struct DestroyInGroups {
      std::vector<natsMsg*> published;
      void destroy() noexcept {
        for (natsMsg* msg : published) natsMsg_Destroy(msg);
        published.clear();
      }
      ~DestroyInGroups() { destroy(); }
    } created;
    constexpr std::size_t kDestroyEvery = 256;
    if (headers_.load(std::memory_order_relaxed)) created.published.reserve(std::min(batch.size(), kDestroyEvery));
    for (std::size_t i = 0; i < batch.size(); ++i) {
      const Message& m = batch[i];
      if (m.body.size() > limit) [[unlikely]] return too_large(batch, i, known_limit);
      natsStatus s = NATS_OK;
      bool sent = false;
      if (has_header_block(m) && headers_.load(std::memory_order_relaxed)) {
        if (created.published.size() == kDestroyEvery) created.destroy();
        s = publish_with_headers(nc, m, created.published);
        sent = s != NATS_NO_SERVER_SUPPORT;
        if (!sent) no_header_support(nc);  // the envelope body carries everything: sent without them
      }
      if (!sent) {
        // No natsMsg at all: cnats copies the body straight into its write buffer.
        s = natsConnection_Publish(nc, m.subject.c_str(), m.body.data(), static_cast<int>(m.body.size()));
      }
      if (s != NATS_OK) [[unlikely]] {
        if (s == NATS_MAX_PAYLOAD) return too_large(batch, i, natsConnection_GetMaxPayload(nc));
        publish_errors_.fetch_add(1, std::memory_order_relaxed);
        published_.fetch_add(i, std::memory_order_relaxed);
        return PublishResult{i, transient(s),
                             describe("publish to \"" + m.subject + "\"", s)};
      }
    }
    published_.fetch_add(batch.size(), std::memory_order_relaxed);
    return PublishResult{batch.size(), true, {}};
  }

  // batch[index] is larger than the server accepts: a permanent failure for that message (it
  // would fail the same way every time; the Bridge drops it instead of retrying).
  PublishResult too_large(std::span<const Message> batch, std::size_t index, std::int64_t limit) {
    const Message& m = batch[index];
    publish_errors_.fetch_add(1, std::memory_order_relaxed);
    too_large_.fetch_add(1, std::memory_order_relaxed);
    published_.fetch_add(index, std::memory_order_relaxed);
    const bool with_headers = headers_.load(std::memory_order_relaxed);
    return PublishResult{index, false,
                         scrub_("nats: publish to \"" + m.subject + "\": the message is " +
                                std::to_string(payload_bytes(m, with_headers)) + " bytes (body " +
                                std::to_string(m.body.size()) + (with_headers && has_header_block(m) ? " plus headers" : "") +
                                "), more than the server's max_payload of " + std::to_string(limit) + " bytes")};
  }

  // cnats refused headers. Before the first connect it has no server INFO yet, so that says
  // nothing about the server: only a connected server without header support turns them off,
  // until a server with headers is met again.
  void no_header_support(natsConnection* nc) {
    if (natsConnection_Status(nc) == NATS_CONN_STATUS_CONNECTED) headers_off();
  }

  // The message is appended to `created` (room reserved by the caller), which destroys it. Its
  // headers, then Nats-Msg-Id = Message::id when that is not empty (it wins over a header of that
  // name).
  static natsStatus publish_with_headers(natsConnection* nc, const Message& m, std::vector<natsMsg*>& created) {
    natsMsg* msg = nullptr;
    natsStatus s = natsMsg_Create(&msg, m.subject.c_str(), nullptr, m.body.data(), static_cast<int>(m.body.size()));
    if (s != NATS_OK) return s;
    created.push_back(msg);
    for (std::size_t h = 0; s == NATS_OK && h < m.headers.size(); ++h) {
      s = natsMsgHeader_Set(msg, m.headers[h].first.c_str(), m.headers[h].second.c_str());
    }
    if (s == NATS_OK && !m.id.empty()) s = natsMsgHeader_Set(msg, kIdHeader, m.id.c_str());
    if (s == NATS_OK) s = natsConnection_PublishMsg(nc, msg);
    return s;
  }

  void do_subscribe(std::uint64_t id, const std::string& pattern, const DeliveryOptions& options,
                    DeliveryHandler handler) override {
    if (forked_without_after_fork()) {
      throw TransportError("nats: subscribe \"" + pattern + "\" in a forked child without notifications::after_fork()");
    }
    subscribe_unflushed(id, pattern, options, std::move(handler));
    flush_subscriptions();
  }

  // The server knows the interest once it answered a PING sent after the SUB: events published
  // after subscribe() returns reach this subscription. Only while connected: before the first
  // connect and while reconnecting, cnats sends every subscription when the connection is made,
  // and waiting here would only block start() (retry_on_failed_connect) for connect_timeout.
  void flush_subscriptions() {
    natsConnection* nc = connection_unlocked();  // do_subscribe or do_after_fork: see connection_unlocked()
    if (natsConnection_Status(nc) == NATS_CONN_STATUS_CONNECTED) {
      natsConnection_FlushTimeout(nc, options_.connect_timeout.count());
    }
  }

  // do_subscribe() without its closing flush.
  void subscribe_unflushed(std::uint64_t id, const std::string& pattern, const DeliveryOptions& options,
                           DeliveryHandler handler) {
    const std::string& group = options.group;
    auto* state = new Subscription{shared_, handler, options.headers};
    shared_->retain();
    natsSubscription* sub = nullptr;
    natsConnection* nc = connection_unlocked();  // do_subscribe or do_after_fork: see connection_unlocked()
    natsStatus s = group.empty()
                       ? natsConnection_Subscribe(&sub, nc, pattern.c_str(), on_message, state)
                       : natsConnection_QueueSubscribe(&sub, nc, pattern.c_str(), group.c_str(), on_message, state);
    if (s != NATS_OK) {
      delete state;
      shared_->release();
      throw TransportError(describe("subscribe \"" + pattern + "\"", s));
    }
    s = natsSubscription_SetOnCompleteCB(sub, on_subscription_complete, state);
    if (s == NATS_OK) {
      s = natsSubscription_SetPendingLimits(sub, options_.pending_messages_limit, options_.pending_bytes_limit);
    }
    if (s != NATS_OK) {
      // Without the on-complete callback the state may still be in use: leak it rather than race.
      natsSubscription_Unsubscribe(sub);
      natsSubscription_Destroy(sub);
      throw TransportError(describe("subscribe \"" + pattern + "\"", s));
    }
    {
      detail::SharedMutexWriteLock lock(connection_mutex_);
      subscriptions_[id] = Entry{sub, state, id, pattern, options, std::move(handler)};
    }
  }

  void do_unsubscribe(std::uint64_t id) override {
    if (forked_without_after_fork()) return;
    Entry entry;
    {
      detail::SharedMutexWriteLock lock(connection_mutex_);
      const auto it = subscriptions_.find(id);
      if (it == subscriptions_.end()) return;
      entry = it->second;
      subscriptions_.erase(it);
    }
    entry.state->active.store(false, std::memory_order_release);  // `state` lives until on-complete
    if (!entry.dropped_kept) keep_dropped_count(entry.sub);  // before unsubscribing: cnats refuses it after
    natsSubscription_Unsubscribe(entry.sub);
    natsSubscription_Destroy(entry.sub);
  }

  // True only when a PING sent after everything published so far was answered by the server.
  // While the connection is down (publishes wait in cnats' reconnect buffer) it waits for the
  // reconnect and flushes then, or returns false at the deadline; false at once when something
  // was written to a connection that broke before it was confirmed (below).
  // May run while do_stop drains (TransportBase does not serialise flush): the shared lock keeps
  // the connection alive; once closed, FlushTimeout returns at once.
  // What was written to a live connection goes with it when it breaks (cnats keeps only what is
  // published while it knows the connection is down, in its reconnect buffer): a flush that
  // succeeds on the next connection does not cover it. So flush() is false when the connection
  // that unconfirmed messages were written to is gone, and the caller sends them again.
  bool do_flush(Deadline deadline) override {
    if (forked_without_after_fork()) return false;
    detail::SharedMutexReadLock lock(connection_mutex_);
    if (nc_ == nullptr) return false;
    // The connection (disconnect count) unconfirmed messages were written to; kNoneWritten: none.
    const std::uint64_t written_to = unconfirmed_connection_.load(std::memory_order_acquire);
    const bool at_risk = written_to != kNoneWritten;
    for (int attempt = 0; attempt < 1'000'000; ++attempt) {
      if (closing_.load()) return false;
      const natsConnStatus status = natsConnection_Status(nc_);
      if (status == NATS_CONN_STATUS_CLOSED) return false;
      if (status == NATS_CONN_STATUS_CONNECTED) {
        const natsStatus s = natsConnection_FlushTimeout(nc_, millis_until(deadline));
        if (s == NATS_OK) {
          if (at_risk && shared_->disconnects.load(std::memory_order_acquire) != written_to) {
            return written_to_lost_connection(written_to);  // reconnected since they were written
          }
          std::uint64_t expected = written_to;
          unconfirmed_connection_.compare_exchange_strong(expected, kNoneWritten);
          return true;
        }
        // Disconnected meanwhile: the PING was lost with the connection, and what was written to
        // it may be lost too. With nothing written to it, wait for the next one and flush there.
        if (s != NATS_CONNECTION_DISCONNECTED) return false;
        if (at_risk) return written_to_lost_connection(written_to);
      } else if (at_risk) {
        return written_to_lost_connection(written_to);  // the connection they went to is gone
      }
      const auto now = Clock::now();
      if (now >= deadline) return false;
      std::this_thread::sleep_for(std::min<Clock::duration>(deadline - now, std::chrono::milliseconds(5)));
    }
    return false;
  }

  static constexpr std::uint64_t kNoneWritten = std::numeric_limits<std::uint64_t>::max();

  // Messages were written to the connection of disconnect count `connection` (not to cnats'
  // reconnect buffer): unconfirmed until a flush on that same connection succeeds. Keeps the
  // oldest such connection; one relaxed load per batch once set.
  void note_written_to_live(std::uint64_t connection) {
    if (unconfirmed_connection_.load(std::memory_order_relaxed) != kNoneWritten) return;
    std::uint64_t expected = kNoneWritten;
    unconfirmed_connection_.compare_exchange_strong(expected, connection, std::memory_order_acq_rel);
  }

  // flush() is false: what was written to connection `connection` may be lost with it. The
  // caller sends it again (a durable outbox does), so it is no longer tracked here.
  bool written_to_lost_connection(std::uint64_t connection) {
    std::uint64_t expected = connection;
    unconfirmed_connection_.compare_exchange_strong(expected, kNoneWritten);
    return false;
  }

  void do_stop(Deadline deadline) override {
    if (forked_without_after_fork()) {
      // Nothing here may take a lock: another thread may have held it at fork(). No cnats call,
      // no logger (its locks), no join (the threads do not exist in this child).
      detail::write_stderr_unlocked(
          "notifications nats: stopped in a forked child without notifications::after_fork(): "
          "the connection is abandoned (cnats cannot cross fork())\n");
      return;
    }
    close_connection(deadline);
    shared_->events.close();
  }

  void do_prepare_fork(Deadline deadline) override {
    std::vector<Entry> keep;
    {
      detail::SharedMutexReadLock lock(connection_mutex_);
      for (const auto& [id, entry] : subscriptions_) keep.push_back(entry);
    }
    close_connection(deadline);
    fork_subscriptions_ = std::move(keep);
  }

  void do_after_fork(bool in_child) override {
    {
      detail::MutexLock lock(shared_->mutex);
      shared_->closed = false;
    }
    if (in_child) {
      (void)log_thread_.release();  // the parent's log thread: gone in the child, not joinable
      // What the parent wrote is the parent's to confirm: a child's flush covers its own writes.
      unconfirmed_connection_.store(kNoneWritten, std::memory_order_release);
    }
    generation_.store(detail::fork_generation());  // this process may use the transport again
    try {
      connect(true);  // cnats keeps trying in the background when no server answers
      for (Entry& entry : fork_subscriptions_) {
        subscribe_unflushed(entry.id, entry.pattern, entry.options, entry.handler);
      }
      if (!fork_subscriptions_.empty()) flush_subscriptions();
    } catch (const std::exception& e) {
      note_error(std::string("after fork: ") + e.what());
    }
    fork_subscriptions_.clear();
  }

 private:
  // Flushes, drains (retried while reconnecting), waits for closed, destroys the connection and
  // its subscriptions, and stops the log thread. The subscriptions' handlers are left to the
  // caller (the map is emptied).
  void close_connection(Deadline deadline) {
    natsConnection* nc = connection_unlocked();  // a lifecycle call: see connection_unlocked()
    if (nc == nullptr) return;  // never started
    closing_.store(true);  // the disconnect that draining causes is no error
    {
      // cnats gives no drop count for a closed subscription: keep them now, before draining.
      detail::SharedMutexWriteLock lock(connection_mutex_);
      for (auto& [id, entry] : subscriptions_) {
        keep_dropped_count(entry.sub);
        entry.dropped_kept = true;
      }
    }
    if (natsConnection_Status(nc) == NATS_CONN_STATUS_CONNECTED) {
      // Nothing publishes now (stop and a fork's preparation exclude publish): a flush answered
      // on the connection that unconfirmed messages were written to confirms them all. A drain
      // does not tell (cnats closes the connection whether or not its own flush succeeded).
      std::uint64_t written_to = unconfirmed_connection_.load(std::memory_order_acquire);
      if (natsConnection_FlushTimeout(nc, millis_until(deadline)) == NATS_OK &&
          (written_to == kNoneWritten || shared_->disconnects.load(std::memory_order_acquire) == written_to)) {
        unconfirmed_connection_.compare_exchange_strong(written_to, kNoneWritten);
      }
    }
    // Drain: subscriptions hand over what they hold, publishes are written out, then cnats
    // closes the connection. Refused while reconnecting: retried until the deadline.
    bool draining = false;
    for (int attempt = 0; attempt < 100'000 && Clock::now() < deadline; ++attempt) {
      const natsStatus s = natsConnection_DrainTimeout(nc, millis_until(deadline));
      if (s == NATS_OK) {
        draining = true;
        break;
      }
      if (s == NATS_CONNECTION_CLOSED) break;
      if (s != NATS_ILLEGAL_STATE && s != NATS_CONNECTION_DISCONNECTED) {
        note_error(describe("drain", s));
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (!draining || !wait_closed(deadline + kCloseGrace)) {
      for (const auto& [pattern, count] : pending_by_pattern()) {
        discarded_.fetch_add(count, std::memory_order_relaxed);
        detail::log(LogLevel::warn,
                    "notifications nats: {} received message(s) on \"{}\" discarded at stop (deadline passed)", count,
                    detail::wire_text(pattern));
      }
      natsConnection_Close(nc);
      // Close is synchronous; the closed callback is queued behind other connections' callbacks.
      // Not waiting past the deadline: Shared is reference-counted, so the callback may come late.
      if (!wait_closed(std::max(deadline, Clock::now()) + kCloseGrace)) {
        detail::log(LogLevel::debug, "notifications nats: the closed callback had not run by the stop deadline");
      }
    }
    std::map<std::uint64_t, Entry> subs;
    {
      detail::SharedMutexWriteLock lock(connection_mutex_);
      subs.swap(subscriptions_);
      nc_ = nullptr;
    }
    for (auto& [id, entry] : subs) natsSubscription_Destroy(entry.sub);
    natsConnection_Destroy(nc);
    open_connections().fetch_sub(1);
    max_payload_.store(0);
    log_stop_.store(true);
    shared_->events.wake();
    if (log_thread_ && log_thread_->joinable()) log_thread_->join();
    log_thread_.reset();
  }

 protected:

  nlohmann::json do_health() const override {
    if (forked_without_after_fork()) {
      // Atomics only: a lock or a cnats call could wait forever on what another thread held at fork().
      return nlohmann::json{
          {"connection", "forked_child"},
          {"forked_child", true},
          {"published", published_.load()},
          {"publish_errors", publish_errors_.load()},
          {"last_error", "used in a forked child without notifications::after_fork()"},
      };
    }
    detail::SharedMutexReadLock lock(connection_mutex_);
    nlohmann::json h{
        {"connection", nc_ == nullptr ? "closed" : status_name(natsConnection_Status(nc_))},
        {"server", nc_ == nullptr ? "" : connected_url_locked()},
        {"servers", options_.servers},
        {"name", options_.name},
        {"disconnects", shared_->disconnects.load()},
        {"reconnects", shared_->reconnects.load()},
        {"published", published_.load()},
        {"publish_errors", publish_errors_.load()},
        {"received", shared_->received.load()},
        {"async_errors", shared_->async_errors.load()},
        {"lame_duck", shared_->lame_duck.load()},
        {"handler_errors", shared_->handler_errors.load()},
        {"discarded", discarded_.load()},
        {"subscriptions", subscriptions_.size()},
    };
    std::int64_t dropped = 0;
    std::int64_t pending = 0;
    for (const auto& [id, entry] : subscriptions_) {
      std::int64_t d = 0;
      if (!entry.dropped_kept && natsSubscription_GetDropped(entry.sub, &d) == NATS_OK) dropped += d;
      int msgs = 0;
      int bytes = 0;
      if (natsSubscription_GetPending(entry.sub, &msgs, &bytes) == NATS_OK) pending += msgs;
    }
    h["slow_consumer_dropped"] = dropped + static_cast<std::int64_t>(dropped_by_closed_.load());
    h["events_unlogged"] = shared_->events_unlogged.load();
    h["slow_consumer_events"] = shared_->slow_consumer_events.load();
    h["pending"] = pending;
    h["buffered_bytes"] = nc_ == nullptr ? 0 : std::max(0, natsConnection_Buffered(nc_));
    h["reconnect_buffered_bytes"] = nc_ == nullptr ? 0 : shared_->reconnect_buffered_bytes.load();
    h["max_payload"] = max_payload_.load();
    h["too_large"] = too_large_.load();
    detail::MutexLock error_lock(error_mutex_);
    h["last_error"] = last_error_;
    return h;
  }

 private:
  struct Entry {
    natsSubscription* sub = nullptr;
    Subscription* state = nullptr;
    std::uint64_t id = 0;
    std::string pattern;
    DeliveryOptions options;
    DeliveryHandler handler;  // a copy, to subscribe again after a fork
    bool dropped_kept = false;  // its slow-consumer drops are in dropped_by_closed_
  };

  void check(natsStatus status, const std::string& what) const {
    if (status != NATS_OK) throw TransportError(describe(what, status));
  }

  std::string describe(const std::string& what, natsStatus status) const {
    std::string text = "nats: " + what + ": " + natsStatus_GetText(status);
    const std::string detail = last_error_detail(status);
    if (!detail.empty()) text += " (" + detail + ")";
    return scrub_(std::move(text));
  }

  // cnats' last error without its C source locations ("(conn.c:1905): ", "natsConn_connect:123: "),
  // or "" when it says no more than the status does.
  static std::string last_error_detail(natsStatus status) {
    const char* raw = nats_GetLastError(nullptr);
    if (raw == nullptr || *raw == '\0') return {};
    static const std::regex parenthesised(R"(\(\s*[A-Za-z_][\w.]*:[0-9]+\s*\)\s*:?\s*)");
    static const std::regex prefix(R"(^\s*[A-Za-z_][\w.]*:[0-9]+\s*:?\s*)");
    static const std::regex suffix(R"(\s*[A-Za-z_][\w.]*:[0-9]+\s*$)");
    std::string text = std::regex_replace(raw, parenthesised, "");
    text = std::regex_replace(text, prefix, "");
    text = std::regex_replace(text, suffix, "");
    const auto lower = [](std::string s) {
      for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      return s;
    };
    if (text.empty() || lower(text) == lower(natsStatus_GetText(status))) return {};
    return text;
  }

  // Which credentials the connect attempt offered, never the secret itself.
  std::string credentials_offered() const {
    if (!options_.user.empty()) {
      return "user \"" + options_.user + "\"" + (options_.password.empty() ? " without a password" : " with a password");
    }
    if (!options_.token.empty()) return "a token";
    if (!options_.creds_file.empty()) return "a credentials file " + options_.creds_file;
    if (!options_.nkey_seed_file.empty()) return "an nkey " + options_.nkey_public;
    return "no credentials";
  }

  // "nats: cannot connect to <servers>: <what happened>: check <what>; offered <credentials>".
  std::string describe_connect_failure(natsStatus status) const {
    const std::string detail = last_error_detail(status);
    std::string lower_detail = detail;
    for (char& c : lower_detail) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    std::string outcome;
    std::string check;
    if (status == NATS_CONNECTION_AUTH_FAILED || lower_detail.find("authorization violation") != std::string::npos ||
        lower_detail.find("authentication") != std::string::npos) {
      outcome = "the server refused the credentials offered (authorization violation)";
      if (!options_.user.empty()) {
        check = "check the user name and password, and that the server's authorization lists this user";
      } else if (!options_.token.empty()) {
        check = "check the token, and that the server expects a token (not a user and password)";
      } else if (!options_.creds_file.empty()) {
        check = "check the credentials file, and that the server trusts its account";
      } else if (!options_.nkey_seed_file.empty()) {
        check = "check nkey_public and nkey_seed_file, and that the server lists this nkey";
      } else {
        check = "check which credentials the server requires and set user and password, token, creds_file or "
                "nkey_seed_file";
      }
    } else if (status == NATS_NO_SERVER) {
      outcome = "no server answered";
      check = "check that nats-server runs and the host and port";
    } else if (status == NATS_TIMEOUT) {
      outcome = "connect timed out after " + std::to_string(options_.connect_timeout.count()) + " ms";
      check = "check that the host and port are reachable (firewall, routing) and connect_timeout_ms";
    } else if (status == NATS_SSL_ERROR) {
      outcome = "TLS handshake failed" + (detail.empty() ? std::string() : " (" + detail + ")");
      check = "check tls_ca_file, tls_hostname, and the server's and client's certificates";
    } else if (status == NATS_SECURE_CONNECTION_REQUIRED) {
      outcome = "the server requires TLS";
      check = "check the URL scheme (tls://) and the tls options";
    } else if (status == NATS_SECURE_CONNECTION_WANTED) {
      outcome = "TLS was asked for but the server does not offer it";
      check = "check the URL scheme (nats://) and the server's tls block";
    } else {
      outcome = natsStatus_GetText(status) + (detail.empty() ? std::string() : " (" + detail + ")");
      check = "check the server's log and the connection options";
    }
    return scrub_("nats: cannot connect to " + servers_text() + ": " + outcome + ": " + check + "; offered " +
                  credentials_offered());
  }

  void note_error(const std::string& text) {
    detail::log(LogLevel::warn, "notifications nats: {}", text);
    record_error(text);
  }
  void record_error(const std::string& text) {
    detail::MutexLock lock(error_mutex_);
    last_error_ = text;
  }

  std::string servers_text() const {
    std::string out;
    for (const std::string& s : options_.servers) out += (out.empty() ? "" : ",") + s;
    return out;
  }

  std::string connected_url() const {
    detail::SharedMutexReadLock lock(connection_mutex_);
    return connected_url_locked();
  }
  std::string connected_url_locked() const NOTIFICATIONS_REQUIRES_SHARED(connection_mutex_) {
    char buffer[512] = {0};
    if (nc_ == nullptr || natsConnection_GetConnectedUrl(nc_, buffer, sizeof buffer) != NATS_OK) return "";
    return scrub_(redact_url(buffer));
  }

  static const char* status_name(natsConnStatus status) {
    switch (status) {
      case NATS_CONN_STATUS_DISCONNECTED:
        return "disconnected";
      case NATS_CONN_STATUS_CONNECTING:
        return "connecting";
      case NATS_CONN_STATUS_CONNECTED:
        return "connected";
      case NATS_CONN_STATUS_CLOSED:
        return "closed";
      case NATS_CONN_STATUS_RECONNECTING:
        return "reconnecting";
      case NATS_CONN_STATUS_DRAINING_SUBS:
      case NATS_CONN_STATUS_DRAINING_PUBS:
        return "draining";
    }
    return "unknown";
  }

  // Messages cnats holds for each subscription that has any, by subscription pattern.
  std::vector<std::pair<std::string, std::uint64_t>> pending_by_pattern() const {
    detail::SharedMutexReadLock lock(connection_mutex_);
    std::vector<std::pair<std::string, std::uint64_t>> pending;
    for (const auto& [id, entry] : subscriptions_) {
      int msgs = 0;
      int bytes = 0;
      if (natsSubscription_GetPending(entry.sub, &msgs, &bytes) == NATS_OK && msgs > 0) {
        pending.emplace_back(entry.pattern, static_cast<std::uint64_t>(msgs));
      }
    }
    return pending;
  }

  bool wait_closed(Deadline deadline) {
    detail::UniqueMutexLock lock(shared_->mutex);
    while (!shared_->closed) {
      if (lock.wait_until(shared_->changed, deadline) == std::cv_status::timeout) break;
    }
    return shared_->closed;
  }

  // Adds what cnats dropped for `sub` (slow consumer) to the total kept once it is gone.
  void keep_dropped_count(natsSubscription* sub) {
    std::int64_t dropped = 0;
    if (natsSubscription_GetDropped(sub, &dropped) == NATS_OK && dropped > 0) {
      dropped_by_closed_.fetch_add(static_cast<std::uint64_t>(dropped), std::memory_order_relaxed);
    }
  }

  // The pattern of the subscription whose cnats handle is `sub`, or "" (already gone).
  std::string pattern_of(const void* sub) const {
    if (sub == nullptr) return {};
    detail::SharedMutexReadLock lock(connection_mutex_);
    for (const auto& [id, entry] : subscriptions_) {
      if (entry.sub == sub) return entry.pattern;
    }
    return {};
  }

  // The server's text for the last error on the connection ("-ERR '...'"), escaped, or "".
  std::string server_error_text() const {
    detail::SharedMutexReadLock lock(connection_mutex_);
    const char* text = nullptr;
    if (nc_ == nullptr || natsConnection_GetLastError(nc_, &text) == NATS_OK || text == nullptr || *text == '\0') {
      return {};
    }
    return detail::wire_text(text);
  }

  // The transport's own thread: logs what the connection callbacks reported, up to the last
  // event queued before it was asked to stop. Every event updates the counters and last_error;
  // log lines are limited per reason (event kind and status) to one per kLogInterval, the next
  // line saying how many were suppressed meanwhile, so a flood of slow-consumer or other
  // per-message errors costs a line a second, not a line an event.
  void run_log() {
    detail::name_this_thread("ntf-nats-log");
    struct Reason {
      Clock::time_point last_line{};
      std::uint64_t suppressed = 0;
      bool logged = false;
    };
    std::map<std::pair<int, int>, Reason> reasons;
    const auto describe_event = [this](const ConnectionEvent& e) -> std::pair<LogLevel, std::string> {
      switch (e.kind) {
        case ConnectionEvent::Kind::error: {
          std::string text = std::string("asynchronous error: ") + natsStatus_GetText(e.status);
          if (e.status == NATS_SLOW_CONSUMER) {
            const std::string pattern = pattern_of(e.subscription);
            if (!pattern.empty()) text += " on \"" + detail::wire_text(pattern) + "\"";
          } else if (const std::string server = server_error_text(); !server.empty()) {
            text += " (" + server + ")";
          }
          return {LogLevel::warn, text};
        }
        case ConnectionEvent::Kind::disconnected:
          if (closing_.load()) return {LogLevel::info, "disconnected (stopping)"};
          return {LogLevel::warn, "disconnected from the server"};
        case ConnectionEvent::Kind::connected:
        case ConnectionEvent::Kind::reconnected:
          refresh_link_info();
          return {LogLevel::info, std::string(kind_name(e.kind)) + " to " + detail::wire_text(connected_url())};
        case ConnectionEvent::Kind::lame_duck:
          return {LogLevel::warn, "the server " + detail::wire_text(connected_url()) +
                                      " entered lame duck mode (it will shut down; cnats reconnects elsewhere)"};
        case ConnectionEvent::Kind::closed:
          break;
      }
      return {LogLevel::info, kind_name(e.kind)};
    };
    const auto handle = [&](const ConnectionEvent& e) {
      auto [level, text] = describe_event(e);
      if (level == LogLevel::warn) record_error(text);
      Reason& reason = reasons[{static_cast<int>(e.kind), static_cast<int>(e.status)}];
      const auto now = Clock::now();
      if (reason.logged && now - reason.last_line < kLogInterval) {
        ++reason.suppressed;
        return;
      }
      if (reason.suppressed > 0) {
        text += " (" + std::to_string(reason.suppressed) + " more like it suppressed)";
      }
      detail::log(level, "notifications nats: {}", text);
      reason = Reason{now, 0, true};
    };
    decltype(shared_->events)::Batch batch;
    while (!log_stop_.load()) {
      // No timer: close_connection() sets log_stop_ and wakes this wait.
      if (!shared_->events.pop_batch(batch, 64, Clock::time_point::max())) break;
      for (const ConnectionEvent& e : batch) handle(e);
    }
    for (const ConnectionEvent& e : shared_->events.take_all()) handle(e);
    for (const auto& [key, reason] : reasons) {
      if (reason.suppressed == 0) continue;
      const auto kind = static_cast<ConnectionEvent::Kind>(key.first);
      const auto status = static_cast<natsStatus>(key.second);
      detail::log(LogLevel::warn, "notifications nats: {} more \"{}{}\" event(s) suppressed in the log before stop",
                  reason.suppressed, kind_name(kind),
                  kind == ConnectionEvent::Kind::error ? std::string(": ") + natsStatus_GetText(status) : std::string());
    }
  }

  const NatsOptions options_;
  // Every text this transport shows passes through it: cnats' may echo the password or token.
  const redaction::Scrubber scrub_;
  Shared* const shared_ = new Shared;  // one reference, released by the destructor
  std::unique_ptr<std::thread> log_thread_;
  std::atomic<bool> log_stop_{false};
  std::atomic<bool> closing_{false};  // close_connection() runs
  // The fork generation (notifications/process.hpp) that connected, or kNoGeneration.
  std::atomic<std::uint64_t> generation_{kNoGeneration};
  std::vector<Entry> fork_subscriptions_;   // between prepare_fork and after_fork

  // In a child forked without after_fork(): the connection, its threads and any lock another
  // thread held at fork() belong to the parent. One load and a compare (it runs per batch).
  bool forked_without_after_fork() const {
    const std::uint64_t generation = generation_.load(std::memory_order_relaxed);
    return generation != kNoGeneration && generation != detail::fork_generation();
  }

  // Exclusive to change nc_ or subscriptions_, shared to use them. do_publish and do_subscribe
  // read nc_ without it: TransportBase never runs them during do_start or do_stop.
  mutable detail::SharedMutex connection_mutex_;
  natsConnection* nc_ NOTIFICATIONS_GUARDED_BY(connection_mutex_) = nullptr;
  std::map<std::uint64_t, Entry> subscriptions_ NOTIFICATIONS_GUARDED_BY(connection_mutex_);

  // nc_ without connection_mutex_, outside the analysis. For the lifecycle calls that change it
  // (connect and close_connection, on the thread that runs do_start, do_stop, do_prepare_fork or
  // do_after_fork) and for do_publish and do_subscribe, which TransportBase never runs during
  // those: no other thread writes nc_ meanwhile, so reading it unlocked is no race.
  natsConnection* connection_unlocked() const NOTIFICATIONS_NO_THREAD_SAFETY_ANALYSIS { return nc_; }
  // Publish with headers: options.headers and the server of the current connection has them
  // (asked after every (re)connect; optimistic until the first connect).
  mutable std::atomic<bool> headers_{options_.headers};
  mutable std::atomic<std::int64_t> max_payload_{0};  // the server's max_payload; 0 = unknown

  std::atomic<std::uint64_t> published_{0};
  // The disconnect count of the connection that messages not yet covered by a successful flush
  // were written to (kNoneWritten: none): see do_flush().
  std::atomic<std::uint64_t> unconfirmed_connection_{std::numeric_limits<std::uint64_t>::max()};
  std::atomic<std::uint64_t> publish_errors_{0};
  std::atomic<std::uint64_t> discarded_{0};
  std::atomic<std::uint64_t> too_large_{0};  // messages refused for good: over max_payload
  std::atomic<std::uint64_t> dropped_by_closed_{0};  // slow-consumer drops of subscriptions now gone
  mutable detail::Mutex error_mutex_;
  std::string last_error_ NOTIFICATIONS_GUARDED_BY(error_mutex_);
};

}  // namespace

natsConnection* nats_detail::connection_of(Transport& transport) {
  const auto* nats = dynamic_cast<const NatsTransport*>(&transport);
  return nats == nullptr ? nullptr : nats->connection_for_extension();
}

std::unique_ptr<Transport> make_nats_transport(NatsOptions options) {
  return std::make_unique<NatsTransport>(std::move(options));
}

void register_nats_transport() {
  static std::once_flag fork_handler;
  std::call_once(fork_handler, [] {
    // After every Bridge closed its connection: close cnats itself, so that none of its threads
    // exists when fork() runs; it opens again on the next connect, in either process.
    register_fork_handler(
        [] {
          if (open_connections().load() != 0) {
            detail::log(LogLevel::warn,
                        "notifications nats: {} connection(s) outside a Bridge are open at fork(): cnats "
                        "stays open and must not be used in the child",
                        open_connections().load());
            return;
          }
          if (const natsStatus s = nats_CloseAndWait(5000); s != NATS_OK && s != NATS_NOT_INITIALIZED) {
            detail::log(LogLevel::warn, "notifications nats: closing cnats before fork(): {}", natsStatus_GetText(s));
          }
        },
        nullptr);
  });
  for (const char* scheme : {"nats", "tls"}) {
    register_transport(scheme, [](const TransportConfig& config) {
      return make_nats_transport(nats_options_from_config(config));
    });
  }
}

}  // namespace notifications

// Linking notifications::nats registers the schemes before main(); the target's link options
// name this symbol so that the linker keeps this object file.
extern "C" int notifications_nats_registered;
int notifications_nats_registered = [] {
  notifications::register_nats_transport();
  return 1;
}();
