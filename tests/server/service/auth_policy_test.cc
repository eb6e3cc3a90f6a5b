#include "server/service/auth_policy.h"

#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace weightd::service {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;
using ::weightd::testing::IsOk;
using ::weightd::testing::StatusIs;

// sha256("test") and sha256("other").
constexpr char kTestHash[] =
    "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
constexpr char kOtherHash[] =
    "d9298a10d1b0735837dc4bd85dac641b0f3cef27a47e5d53a54f2f3f5b2fcffa";

constexpr char kPolicy[] = R"({"principals": [
  {"name": "trainer-a", "role": "WORKER", "certificate_names": ["worker-a"],
   "tensors": ["encoder/*", "head-a/*"], "worker_ids": ["trainer-a-*"]},
  {"name": "eval", "role": "READER", "token_sha256": ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"],
   "tensors": ["*"]},
  {"name": "ops", "role": "ADMIN", "certificateNames": ["ops"]}
]})";

std::shared_ptr<const AuthPolicy> Policy() {
  auto policy = AuthPolicy::Parse(kPolicy, "test.json");
  EXPECT_THAT(policy, IsOk());
  return policy.ok() ? *policy : nullptr;
}

TEST(PatternTest, StarMatchesAnyRun) {
  EXPECT_TRUE(PatternMatches("*", ""));
  EXPECT_TRUE(PatternMatches("*", "anything/at/all"));
  EXPECT_TRUE(PatternMatches("encoder/*", "encoder/w"));
  EXPECT_FALSE(PatternMatches("encoder/*", "encoder"));
  EXPECT_FALSE(PatternMatches("encoder/*", "decoder/w"));
  EXPECT_TRUE(PatternMatches("a*b*c", "aXbYbZc"));
  EXPECT_FALSE(PatternMatches("a*b*c", "aXbYbZ"));
  EXPECT_TRUE(PatternMatches("trainer-a-*", "trainer-a-0"));
  EXPECT_FALSE(PatternMatches("trainer-a-*", "trainer-b-0"));
  EXPECT_TRUE(PatternMatches("exact", "exact"));
  EXPECT_FALSE(PatternMatches("exact", "exact2"));
}

TEST(AuthPolicyTest, ATokenIdentifiesItsPrincipal) {
  auto policy = Policy();
  ASSERT_NE(policy, nullptr);
  auto p = policy->Identify("Bearer test", {});
  ASSERT_THAT(p, IsOk());
  EXPECT_EQ((*p)->name, "eval");
  EXPECT_EQ((*p)->role, Role::kReader);
  EXPECT_TRUE(policy->has_tokens());
}

TEST(AuthPolicyTest, ACertificateNameIdentifiesItsPrincipal) {
  auto policy = Policy();
  ASSERT_NE(policy, nullptr);
  auto p = policy->Identify(std::nullopt, {"weightd-host", "worker-a"});
  ASSERT_THAT(p, IsOk());
  EXPECT_EQ((*p)->name, "trainer-a");
  EXPECT_EQ((*policy->Identify(std::nullopt, {"ops"}))->role, Role::kAdmin);
}

TEST(AuthPolicyTest, BadOrMissingCredentialsAreUnauthenticated) {
  auto policy = Policy();
  ASSERT_NE(policy, nullptr);
  // An unknown token; never echoed.
  EXPECT_THAT(policy->Identify("Bearer s3cret-guess", {"worker-a"}),
              StatusIs(absl::StatusCode::kUnauthenticated,
                       AllOf(HasSubstr("no principal's"),
                             Not(HasSubstr("s3cret-guess")))));
  for (const char* header :
       {"test", "Basic dGVzdA==", "Bearer ", "bearer test"}) {
    EXPECT_THAT(policy->Identify(header, {}),
                StatusIs(absl::StatusCode::kUnauthenticated,
                         HasSubstr("must be \"Bearer <token>\"")))
        << header;
  }
  EXPECT_THAT(policy->Identify(std::nullopt, {"stranger"}),
              StatusIs(absl::StatusCode::kUnauthenticated,
                       HasSubstr("client certificate (stranger) is no "
                                 "principal's")));
  EXPECT_THAT(policy->Identify(std::nullopt, {}),
              StatusIs(absl::StatusCode::kUnauthenticated,
                       HasSubstr("no credentials")));
}

TEST(AuthPolicyTest, RolesAllowTheirCalls) {
  for (Rpc rpc : {Rpc::kJoin, Rpc::kPush, Rpc::kPull, Rpc::kPushPull,
                  Rpc::kLeave, Rpc::kHeartbeat, Rpc::kBarrier, Rpc::kGetStatus,
                  Rpc::kTakeSnapshot, Rpc::kAttachSegment, Rpc::kPushSegment,
                  Rpc::kPullSegment, Rpc::kGetHistory, Rpc::kDropTensor}) {
    EXPECT_TRUE(RoleAllows(Role::kAdmin, rpc)) << RpcName(rpc);
    EXPECT_EQ(RoleAllows(Role::kWorker, rpc),
              rpc != Rpc::kTakeSnapshot && rpc != Rpc::kDropTensor)
        << RpcName(rpc);
    EXPECT_EQ(RoleAllows(Role::kReader, rpc), rpc == Rpc::kPull ||
                                                  rpc == Rpc::kGetStatus ||
                                                  rpc == Rpc::kGetHistory)
        << RpcName(rpc);
  }
}

TEST(AuthPolicyTest, AWorkerStaysWithinItsPatternsAndLeases) {
  auto policy = Policy();
  ASSERT_NE(policy, nullptr);
  const Permissions worker(policy,
                           *policy->Identify(std::nullopt, {"worker-a"}));
  EXPECT_EQ(worker.principal_name(), "trainer-a");
  EXPECT_FALSE(worker.admin());
  EXPECT_THAT(worker.MayJoinAs("trainer-a-3"), IsOk());
  EXPECT_THAT(worker.MayJoinAs("trainer-b-3"),
              StatusIs(absl::StatusCode::kPermissionDenied,
                       HasSubstr("principal trainer-a (worker) may not join "
                                 "as worker trainer-b-3")));
  EXPECT_THAT(worker.MayUseTensor("head-a/w"), IsOk());
  EXPECT_THAT(worker.MayUseTensor("head-b/w"),
              StatusIs(absl::StatusCode::kPermissionDenied,
                       HasSubstr("may not use tensor head-b/w")));
  EXPECT_THAT(worker.MayUseLease(7, "trainer-a", "trainer-a-0"), IsOk());
  EXPECT_THAT(worker.MayUseLease(7, "trainer-b", "trainer-a-0"),
              StatusIs(absl::StatusCode::kPermissionDenied,
                       HasSubstr("may not use lease 7 of worker trainer-a-0: "
                                 "it belongs to trainer-b")));
  // A lease no principal created: by its worker id.
  EXPECT_THAT(worker.MayUseLease(8, "", "trainer-a-1"), IsOk());
  EXPECT_THAT(worker.MayUseLease(8, "", "trainer-b-1"),
              StatusIs(absl::StatusCode::kPermissionDenied));

  const Permissions admin(policy, *policy->Identify(std::nullopt, {"ops"}));
  EXPECT_TRUE(admin.admin());
  EXPECT_THAT(admin.MayUseLease(7, "trainer-b", "x"), IsOk());
  EXPECT_THAT(admin.MayUseTensor("anything"), IsOk());
  EXPECT_TRUE(Permissions::Unrestricted().admin());
  EXPECT_EQ(Permissions::Unrestricted().principal_name(), "");
}

TEST(AuthPolicyTest, PoliciesThatCannotWorkAreRefusedSayingWhy) {
  const std::string worker =
      R"("role": "WORKER", "certificate_names": ["c"], "tensors": ["*"], "worker_ids": ["*"])";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{", "not a policy"},
      {R"({"principals": [{"name": "a", "rol": "WORKER"}]})", "not a policy"},
      {R"({"principals": []})", "names no principal"},
      {R"({"principals": [{"name": "a", "certificate_names": ["c"]}]})",
       "needs a role"},
      {R"({"principals": [{"name": "a", "role": "ADMIN"}]})",
       "has no credential"},
      {R"({"principals": [{"name": "a", "role": "WORKER", "certificate_names": ["c"], "tensors": ["*"]}]})",
       "is a worker without worker_ids"},
      {R"({"principals": [{"name": "a", "role": "READER", "certificate_names": ["c"]}]})",
       "has no tensors"},
      {R"({"principals": [{"name": "a", "role": "READER", "certificate_names": ["c"], "tensors": ["*"], "worker_ids": ["*"]}]})",
       "has worker_ids but is no worker"},
      {R"({"principals": [{"name": "a", "role": "ADMIN", "certificate_names": ["c"], "tensors": ["*"]}]})",
       "leave out tensors"},
      {R"({"principals": [{"name": "a", )" + worker + "}, {\"name\": \"a\", " +
           worker + "}]}",
       "is named twice"},
      {R"({"principals": [{"name": "a", )" + worker + "}, {\"name\": \"b\", " +
           worker + "}]}",
       "certificate name \"c\" is empty or given twice"},
      {R"({"principals": [{"name": "a", "role": "ADMIN", "token_sha256": ["abc"]}]})",
       "is not 64 hex digits"},
      {std::string(
           R"({"principals": [{"name": "a", "role": "ADMIN", "token_sha256": [")") +
           kTestHash + "\", \"" + kTestHash + "\"]}]}",
       "a token hash is given twice"},
      {R"({"principals": [{"name": "a b", "role": "ADMIN", "certificate_names": ["c"]}]})",
       "principal name"},
  };
  for (const auto& [json, why] : cases) {
    EXPECT_THAT(AuthPolicy::Parse(json, "p.json"),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         AllOf(HasSubstr("p.json: "), HasSubstr(why))))
        << json;
  }
  // Two principals, two tokens: each finds its own.
  auto two = AuthPolicy::Parse(
      std::string(
          R"({"principals": [{"name": "a", "role": "ADMIN", "token_sha256": [")") +
          kTestHash +
          R"("]}, {"name": "b", "role": "ADMIN", "token_sha256": [")" +
          kOtherHash + "\"]}]}",
      "two.json");
  ASSERT_THAT(two, IsOk());
  EXPECT_EQ((*(*two)->Identify("Bearer test", {}))->name, "a");
  EXPECT_EQ((*(*two)->Identify("Bearer other", {}))->name, "b");
}

}  // namespace
}  // namespace weightd::service
