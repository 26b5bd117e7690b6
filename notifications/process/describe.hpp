// Private: turning exceptions into text for logs and error messages.
// Thread-safety: stateless functions, safe from any thread.
#pragma once

#include <exception>
#include <string>

namespace notifications::detail {

// Demangled dynamic type of the exception being handled (call inside a catch block).
std::string current_exception_type();
// "type: what()" for std::exception, the type name alone otherwise.
std::string describe_exception(const std::exception_ptr& error);
// what() of a std::exception, empty for anything else.
std::string exception_message(const std::exception_ptr& error);

}  // namespace notifications::detail
