// A minimal HTTP/1.0 client for the tests that scrape notifications::prometheus's endpoint over a
// real loopback socket. Thread-safety: http() may be called from any thread; each call owns its
// socket.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace test_support {

struct HttpResponse {
  int status = 0;
  std::string content_type;
  std::string body;
};

// One HTTP/1.0 request to 127.0.0.1:`port`; connect, send and every read time out after 5 s, and
// the answer is read up to 8 MiB. Throws std::runtime_error saying what failed.
inline HttpResponse http(std::uint16_t port, const std::string& path, const std::string& method = "GET") {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error("socket() failed");
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  timeval timeout{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0) {
    throw std::runtime_error("connect to 127.0.0.1:" + std::to_string(port) + " failed");
  }
  const std::string request = method + " " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
  if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(request.size())) {
    throw std::runtime_error("send failed");
  }
  std::string raw;
  char buffer[16384];
  while (raw.size() < (8u << 20)) {
    const ssize_t got = ::recv(fd, buffer, sizeof buffer, 0);
    if (got == 0) break;
    if (got < 0) throw std::runtime_error("recv failed or timed out after " + std::to_string(raw.size()) + " bytes");
    raw.append(buffer, static_cast<std::size_t>(got));
  }
  const std::size_t head_end = raw.find("\r\n\r\n");
  if (head_end == std::string::npos || (raw.compare(0, 9, "HTTP/1.1 ") != 0 && raw.compare(0, 9, "HTTP/1.0 ") != 0)) {
    throw std::runtime_error("not an HTTP response: " + raw.substr(0, 200));
  }
  HttpResponse response;
  response.status = std::stoi(raw.substr(9, 3));
  const std::string head = raw.substr(0, head_end);
  if (const std::size_t at = head.find("\r\nContent-Type: "); at != std::string::npos) {
    const std::size_t start = at + 16;
    response.content_type = head.substr(start, head.find("\r\n", start) - start);
  }
  response.body = raw.substr(head_end + 4);
  return response;
}

}  // namespace test_support
