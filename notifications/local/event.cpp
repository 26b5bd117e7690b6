#include "notifications/event.hpp"

#include <cstdio>

#include "local/event_context.hpp"
#include "process/ids.hpp"

namespace notifications {

Event::Event(std::string name, nlohmann::json payload)
    : owned_name_(std::move(name)), owned_payload_(std::move(payload)) {
  name_ = owned_name_;
  payload_ = &*owned_payload_;
  time_ = wall_clock::now();
  start_ = end_ = mono_clock::now();
  sequence_ = detail::next_event_sequence();
  transaction_ = detail::thread_transaction();
  context_ = detail::current_event_context();
}

void Event::own_from(const Event& other) {
  time_ = other.time_;
  start_ = other.start_;
  end_ = other.end_;
  sequence_ = other.sequence_;
  transaction_ = other.transaction_;
  explicit_id_ = other.explicit_id_;
  cpu_time_ = other.cpu_time_;
  exception_ = other.exception_;
  origin_ = other.origin_;
  traceparent_ = other.traceparent_;
  context_ = other.context_;
  where_ = other.where_;
}

Event::Event(const Event& other)
    : owned_name_(other.name_), owned_payload_(std::in_place, *other.payload_) {
  name_ = owned_name_;
  payload_ = &*owned_payload_;
  own_from(other);
}

Event& Event::operator=(const Event& other) {
  if (this != &other) {
    Event copy(other);
    *this = std::move(copy);
  }
  return *this;
}

Event::Event(Event&& other) noexcept { *this = std::move(other); }

Event& Event::operator=(Event&& other) noexcept {
  if (this != &other) {
    owned_name_ = std::string(other.name_);
    if (other.owned_payload_ && other.payload_ == &*other.owned_payload_) {
      owned_payload_.emplace(std::move(*other.owned_payload_));
    } else {
      nlohmann::json copy = *other.payload_;  // before emplace destroys what it may point into
      owned_payload_.emplace(std::move(copy));
    }
    name_ = owned_name_;
    payload_ = &*owned_payload_;
    time_ = other.time_;
    start_ = other.start_;
    end_ = other.end_;
    sequence_ = other.sequence_;
    transaction_ = other.transaction_;
    explicit_id_ = std::move(other.explicit_id_);
    cpu_time_ = other.cpu_time_;
    exception_ = std::move(other.exception_);
    origin_ = std::move(other.origin_);
    traceparent_ = std::move(other.traceparent_);
    context_ = std::move(other.context_);
    where_ = other.where_;
  }
  return *this;
}

std::string Event::id() const {
  if (!explicit_id_.empty()) return explicit_id_;
  return detail::format_event_id(sequence_);
}

const nlohmann::json& Event::context() const noexcept { return detail::context_of(context_); }

const nlohmann::json& Event::tags() const noexcept { return detail::tags_of(context_); }

std::string Event::transaction_id() const { return detail::format_transaction_id(transaction_); }

std::string Event::traceparent() const {
  if (!traceparent_.empty()) return traceparent_;
  if (payload_->is_object()) {
    const auto it = payload_->find("traceparent");
    if (it != payload_->end() && it->is_string()) return it->get<std::string>();
  }
  return {};
}

}  // namespace notifications
