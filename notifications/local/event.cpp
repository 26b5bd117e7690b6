#include "notifications/event.hpp"

#include <cstdio>

#include "local/deferred_payload.hpp"
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

Event::Event(const Event& other) : owned_name_(other.name_) {
  name_ = owned_name_;
  if (other.payload_ != nullptr) {
    owned_payload_.emplace(*other.payload_);
    payload_ = &*owned_payload_;
  } else {
    deferred_payload_ = other.deferred_payload_;
  }
  own_from(other);
}

const nlohmann::json& Event::deferred_payload() const { return deferred_payload_->value(); }

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
    if (other.payload_ == nullptr) {
      owned_payload_.reset();
      payload_ = nullptr;
    } else if (other.owned_payload_ && other.payload_ == &*other.owned_payload_) {
      owned_payload_.emplace(std::move(*other.owned_payload_));
      payload_ = &*owned_payload_;
    } else {
      nlohmann::json copy = *other.payload_;  // before emplace destroys what it may point into
      owned_payload_.emplace(std::move(copy));
      payload_ = &*owned_payload_;
    }
    if (other.deferred_payload_) {
      deferred_payload_ = std::move(other.deferred_payload_);
      other.payload_ = &other.owned_payload_.emplace();  // a moved-from event still has a payload
    } else {
      deferred_payload_.reset();
    }
    name_ = owned_name_;
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
  const nlohmann::json& body = payload();
  if (body.is_object()) {
    const auto it = body.find("traceparent");
    if (it != body.end() && it->is_string()) return it->get<std::string>();
  }
  return {};
}

}  // namespace notifications
