// How throttlectl prints: aligned text for people (-o table), one JSON document for scripts
// (-o json). The JSON field names follow the HTTP API's (docs/api.md) where the two overlap.
#pragma once

#include <chrono>
#include <cstdint>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "throttlex/client.h"

namespace throttlex::cli {

// "250ms", "59.9s", "2m30s", "3h5m", "2d4h"; rounded up, as waiting less would be too early.
// Negative durations mean "never" (hits larger than the bucket).
std::string humanDuration(std::chrono::nanoseconds d);
// Whole milliseconds rounded up; -1 for negative ("never"), as the HTTP API.
std::int64_t ceilMillis(std::chrono::nanoseconds d);
std::string formatPeriodMs(std::chrono::milliseconds period);  // "1m", "1500ms"

nlohmann::json checkJson(const client::CheckResult& r);
std::string_view releaseName(client::LeaseRelease r);  // "released", "unknown", ...
std::string_view renewalName(client::LeaseRenewal r);  // "renewed", "unknown", ...
nlohmann::json ruleJson(const client::Rule& rule);
nlohmann::json persistenceJson(const client::PersistenceInfo& p);
nlohmann::json nodeInfoJson(const client::NodeInfo& info);
nlohmann::json memberJson(const client::Member& member);
nlohmann::json inspectionJson(const std::string& key, const client::KeyInspection& ins);

// Pretty-printed, invalid UTF-8 (keys are arbitrary bytes) replaced rather than thrown on.
void printJson(std::ostream& out, const nlohmann::json& doc);

// "name  value" lines with the names in one padded column.
using Fields = std::vector<std::pair<std::string, std::string>>;
void printFields(std::ostream& out, const Fields& fields);
// A header row and rows, each column padded to its widest cell.
void printTable(std::ostream& out, const std::vector<std::string>& header,
                const std::vector<std::vector<std::string>>& rows);

}  // namespace throttlex::cli
