// Early-return helpers for absl::Status / absl::StatusOr (Abseil 20220623
// ships none).
#ifndef WEIGHTD_COMMON_STATUS_MACROS_H_
#define WEIGHTD_COMMON_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// Evaluates `expr` (an absl::Status); returns it from the enclosing function
// if it is not OK.
#define WEIGHTD_RETURN_IF_ERROR(expr)                  \
  do {                                                 \
    ::absl::Status weightd_status_ = (expr);           \
    if (!weightd_status_.ok()) return weightd_status_; \
  } while (false)

#define WEIGHTD_STATUS_CONCAT_INNER_(a, b) a##b
#define WEIGHTD_STATUS_CONCAT_(a, b) WEIGHTD_STATUS_CONCAT_INNER_(a, b)

// Evaluates `rexpr` (an absl::StatusOr<T>); returns its status if not OK,
// else moves its value into `lhs` (a declaration or an lvalue).
#define WEIGHTD_ASSIGN_OR_RETURN(lhs, rexpr) \
  WEIGHTD_ASSIGN_OR_RETURN_IMPL_(            \
      WEIGHTD_STATUS_CONCAT_(weightd_statusor_, __LINE__), lhs, rexpr)

#define WEIGHTD_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                   \
  if (!statusor.ok()) return std::move(statusor).status();   \
  lhs = std::move(statusor).value()

#endif  // WEIGHTD_COMMON_STATUS_MACROS_H_
