// A minimal Server-Sent Events client for the tests of GET /events over a real loopback socket:
// sends the request, checks the answer's status and content type, then parses frames as a browser
// does (id, event, data, comments). Thread-safety: one SseClient per thread.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>

namespace test_support {

struct SseFrame {
  std::string id;
  std::string event;  // "message" when the frame named none
  std::string data;
  std::string comment;  // a comment-only frame (": heartbeat"): its text, without ": "
  bool is_comment() const { return event.empty() && data.empty() && id.empty() && !comment.empty(); }
};

class SseClient {
 public:
  // Connects to 127.0.0.1:`port` and sends GET `target` (with Last-Event-ID when not empty and
  // `extra_headers`, each ending with \r\n). receive_buffer > 0 shrinks the socket's receive
  // buffer (a client that stops reading then holds up the server sooner).
  SseClient(std::uint16_t port, const std::string& target, const std::string& last_event_id = {},
            const std::string& extra_headers = {}, int receive_buffer = 0) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) throw std::runtime_error("socket() failed");
    if (receive_buffer > 0) ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &receive_buffer, sizeof receive_buffer);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0) {
      ::close(fd_);
      throw std::runtime_error("connect to 127.0.0.1:" + std::to_string(port) + " failed");
    }
    std::string request = "GET " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n";
    if (!last_event_id.empty()) request += "Last-Event-ID: " + last_event_id + "\r\n";
    request += extra_headers + "\r\n";
    if (::send(fd_, request.data(), request.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(request.size())) {
      ::close(fd_);
      throw std::runtime_error("send failed");
    }
  }
  ~SseClient() {
    if (fd_ >= 0) ::close(fd_);
  }
  SseClient(const SseClient&) = delete;
  SseClient& operator=(const SseClient&) = delete;

  // Reads the status line and headers (up to `wait`): the status, with the body read so far kept.
  int status(std::chrono::milliseconds wait = std::chrono::seconds(10)) {
    if (status_ != 0) return status_;
    const auto until = std::chrono::steady_clock::now() + wait;
    std::size_t end = std::string::npos;
    while ((end = buffer_.find("\r\n\r\n")) == std::string::npos) {
      if (!fill(until)) throw std::runtime_error("no HTTP answer; got: " + buffer_.substr(0, 200));
    }
    head_ = buffer_.substr(0, end);
    buffer_.erase(0, end + 4);
    if (head_.compare(0, 9, "HTTP/1.1 ") != 0) throw std::runtime_error("not an HTTP answer: " + head_.substr(0, 200));
    status_ = std::stoi(head_.substr(9, 3));
    return status_;
  }
  const std::string& head() const { return head_; }
  // After status(): the rest of a non-stream answer (up to the close), for error texts.
  std::string body(std::chrono::milliseconds wait = std::chrono::seconds(5)) {
    status(wait);
    const auto until = std::chrono::steady_clock::now() + wait;
    while (fill(until)) {
    }
    return buffer_;
  }

  // The next frame, or nullopt when none came within `wait` or the server closed the stream
  // (closed() tells which).
  std::optional<SseFrame> next(std::chrono::milliseconds wait = std::chrono::seconds(10)) {
    status(wait);
    const auto until = std::chrono::steady_clock::now() + wait;
    for (;;) {
      const std::size_t end = buffer_.find("\n\n");
      if (end != std::string::npos) {
        const std::string block = buffer_.substr(0, end);
        buffer_.erase(0, end + 2);
        SseFrame frame = parse(block);
        if (frame.id.empty() && frame.event.empty() && frame.data.empty() && frame.comment.empty()) continue;
        return frame;
      }
      if (!fill(until)) return std::nullopt;
    }
  }
  // The next frame that is not a comment (heartbeat) nor the first "connected" one.
  std::optional<SseFrame> next_event(std::chrono::milliseconds wait = std::chrono::seconds(10)) {
    const auto until = std::chrono::steady_clock::now() + wait;
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
      if (left.count() <= 0) return std::nullopt;
      std::optional<SseFrame> frame = next(left);
      if (!frame || !frame->is_comment()) return frame;
    }
  }
  bool closed() const { return closed_; }

 private:
  static SseFrame parse(const std::string& block) {
    SseFrame frame;
    std::size_t start = 0;
    while (start <= block.size()) {
      std::size_t stop = block.find('\n', start);
      if (stop == std::string::npos) stop = block.size();
      const std::string line = block.substr(start, stop - start);
      start = stop + 1;
      if (line.empty()) continue;
      if (line[0] == ':') {
        frame.comment = line.size() > 2 ? line.substr(2) : std::string();
        continue;
      }
      const std::size_t colon = line.find(':');
      const std::string field = line.substr(0, colon);
      std::string value = colon == std::string::npos ? std::string() : line.substr(colon + 1);
      if (!value.empty() && value[0] == ' ') value.erase(0, 1);
      if (field == "id") frame.id = value;
      if (field == "event") frame.event = value;
      if (field == "data") frame.data += frame.data.empty() ? value : "\n" + value;
    }
    if (frame.event.empty() && !frame.data.empty()) frame.event = "message";
    return frame;
  }

  // Reads what arrives before `until`; false on timeout or close.
  bool fill(std::chrono::steady_clock::time_point until) {
    if (closed_) return false;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd descriptor{fd_, POLLIN, 0};
    if (::poll(&descriptor, 1, static_cast<int>(left.count())) <= 0) return false;
    char chunk[16384];
    const ssize_t got = ::recv(fd_, chunk, sizeof chunk, 0);
    if (got <= 0) {
      closed_ = true;
      return false;
    }
    buffer_.append(chunk, static_cast<std::size_t>(got));
    return true;
  }

  int fd_ = -1;
  int status_ = 0;
  bool closed_ = false;
  std::string head_;
  std::string buffer_;
};

}  // namespace test_support
