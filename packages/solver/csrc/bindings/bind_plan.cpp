// Python bindings of the plan area: OverlapParams, make_dist_attn_plan and the read-only plan types.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "bindings/bindings.hpp"
#include "bindings/range_lists.hpp"
#include "errors.hpp"
#include "plan/dist_attn_plan.hpp"

namespace py = pybind11;

namespace magi::bindings {

namespace {

py::array_t<int32_t> int32_array(std::vector<py::ssize_t> shape) { return py::array_t<int32_t>(shape); }

void check_int32(const CalcArgs& c) {
  for (const auto& s : c.slices)
    MAGI_CHECK(s.qe <= INT32_MAX && s.ke <= INT32_MAX,
               "CalcArgs.as_arrays(): a range end exceeds int32 (q_end=" << s.qe << ", k_end=" << s.ke << ").");
}

}  // namespace

void bind_plan(py::module_& m) {
  py::class_<OverlapParams>(m, "OverlapParams", R"doc(
Multi-stage overlap settings (read-only). degree is the number of remote stages in static mode;
dynamic mode picks, per rank, the degree in 1..dynamic_max_degree (0: no limit but
max_num_chunks) minimising the pipeline cost and uses the largest over ranks. enable=False means one remote stage holding all remote KV.
alg: "uniform" (contiguous equal-count groups) or "greedy" (comm balanced against the previous
stage's compute under the cost model; never worse than uniform).
)doc")
      .def(py::init([](bool enable, const std::string& mode, int64_t degree, int64_t dynamic_max_degree,
                       int64_t min_chunk_size, int64_t max_num_chunks, const std::string& alg,
                       double calc_cost_factor, double comm_cost_factor, bool random_costs,
                       int64_t random_seed) {
             const char* fn = "OverlapParams()";
             OverlapParams p;
             p.enable = enable;
             p.mode = overlap_mode_from_string(fn, mode);
             p.degree = degree;
             p.dynamic_max_degree = dynamic_max_degree;
             p.min_chunk_size = min_chunk_size;
             p.max_num_chunks = max_num_chunks;
             p.alg = overlap_alg_from_string(fn, alg);
             p.calc_cost_factor = calc_cost_factor;
             p.comm_cost_factor = comm_cost_factor;
             p.random_costs = random_costs;
             p.random_seed = random_seed;
             check_overlap(fn, p);
             return p;
           }),
           py::kw_only(), py::arg("enable") = true, py::arg("mode") = "static", py::arg("degree") = 1,
           py::arg("dynamic_max_degree") = 8, py::arg("min_chunk_size") = 512,
           py::arg("max_num_chunks") = 64, py::arg("alg") = "uniform", py::arg("calc_cost_factor") = 1.0,
           py::arg("comm_cost_factor") = 1.0, py::arg("random_costs") = false, py::arg("random_seed") = 0)
      .def_property_readonly("enable", [](const OverlapParams& p) { return p.enable; })
      .def_property_readonly("mode", [](const OverlapParams& p) { return overlap_mode_name(p.mode); })
      .def_property_readonly("degree", [](const OverlapParams& p) { return p.degree; })
      .def_property_readonly("dynamic_max_degree", [](const OverlapParams& p) { return p.dynamic_max_degree; })
      .def_property_readonly("min_chunk_size", [](const OverlapParams& p) { return p.min_chunk_size; })
      .def_property_readonly("max_num_chunks", [](const OverlapParams& p) { return p.max_num_chunks; })
      .def_property_readonly("alg", [](const OverlapParams& p) { return overlap_alg_name(p.alg); })
      .def_property_readonly("calc_cost_factor", [](const OverlapParams& p) { return p.calc_cost_factor; })
      .def_property_readonly("comm_cost_factor", [](const OverlapParams& p) { return p.comm_cost_factor; })
      .def_property_readonly("random_costs", [](const OverlapParams& p) { return p.random_costs; })
      .def_property_readonly("random_seed", [](const OverlapParams& p) { return p.random_seed; })
      .def("__repr__", &OverlapParams::repr)
      .def("__eq__", [](const OverlapParams& a, const OverlapParams& b) { return a == b; })
      .def("__hash__", [](const OverlapParams& p) { return py::hash(py::str(p.repr())); })
      .def(py::pickle(
          [](const OverlapParams& p) {
            return py::make_tuple(p.enable, overlap_mode_name(p.mode), p.degree, p.dynamic_max_degree,
                                  p.min_chunk_size, p.max_num_chunks, overlap_alg_name(p.alg),
                                  p.calc_cost_factor, p.comm_cost_factor, p.random_costs, p.random_seed);
          },
          [](const py::tuple& t) {
            const char* fn = "OverlapParams.__setstate__()";
            MAGI_CHECK(t.size() == 11, fn << ": expected an 11-tuple, got " << t.size() << " items.");
            OverlapParams p;
            p.enable = t[0].cast<bool>();
            p.mode = overlap_mode_from_string(fn, t[1].cast<std::string>());
            p.degree = t[2].cast<int64_t>();
            p.dynamic_max_degree = t[3].cast<int64_t>();
            p.min_chunk_size = t[4].cast<int64_t>();
            p.max_num_chunks = t[5].cast<int64_t>();
            p.alg = overlap_alg_from_string(fn, t[6].cast<std::string>());
            p.calc_cost_factor = t[7].cast<double>();
            p.comm_cost_factor = t[8].cast<double>();
            p.random_costs = t[9].cast<bool>();
            p.random_seed = t[10].cast<int64_t>();
            check_overlap(fn, p);
            return p;
          }));

  py::class_<CalcArgs>(m, "CalcArgs", "Kernel arguments of one stage (q host-local, k local to its KV buffer).")
      .def_property_readonly("q_ranges", [](const CalcArgs& c) {
        py::list out;
        for (const auto& s : c.slices) out.append(py::make_tuple(s.qs, s.qe));
        return out;
      })
      .def_property_readonly("k_ranges", [](const CalcArgs& c) {
        py::list out;
        for (const auto& s : c.slices) out.append(py::make_tuple(s.ks, s.ke));
        return out;
      })
      .def_property_readonly("mask_types", [](const CalcArgs& c) {
        std::vector<int64_t> out;
        for (const auto& s : c.slices) out.push_back(static_cast<int64_t>(s.type));
        return out;
      })
      .def_property_readonly("area", [](const CalcArgs& c) { return c.area; })
      .def("__len__", [](const CalcArgs& c) { return c.slices.size(); })
      .def(
          "as_arrays",
          [](const CalcArgs& c) {
            check_int32(c);
            const auto n = static_cast<py::ssize_t>(c.slices.size());
            auto q = int32_array({n, 2}), k = int32_array({n, 2});
            auto t = int32_array({n});
            int32_t *qp = q.mutable_data(), *kp = k.mutable_data(), *tp = t.mutable_data();
            for (py::ssize_t i = 0; i < n; ++i) {
              const auto& s = c.slices[i];
              qp[2 * i] = static_cast<int32_t>(s.qs), qp[2 * i + 1] = static_cast<int32_t>(s.qe);
              kp[2 * i] = static_cast<int32_t>(s.ks), kp[2 * i + 1] = static_cast<int32_t>(s.ke);
              tp[i] = static_cast<int32_t>(s.type);
            }
            return py::make_tuple(q, k, t);
          },
          "(q int32 [N, 2], k int32 [N, 2], mask types int32 [N]) numpy arrays.")
      .def("__repr__", &CalcArgs::repr);

  py::class_<CastArgs>(m, "CastArgs", R"doc(
group_cast arguments of one rank for one stage, in tokens of the local K buffer. The backward
group_reduce is the transpose (input/output swapped, dst_index = src_index, src_indices =
dst_indices).
)doc")
      .def_readonly("input_split_sizes", &CastArgs::input_split_sizes)
      .def_readonly("dst_indices", &CastArgs::dst_indices)
      .def_readonly("output_split_sizes", &CastArgs::output_split_sizes)
      .def_readonly("src_index", &CastArgs::src_index)
      .def("__repr__", &CastArgs::repr);

  py::class_<StagePlan>(m, "StagePlan", "One remote stage of one rank: what it receives and computes.")
      .def_property_readonly("remote_k_ranges", [](const StagePlan& s) { return ranges_to_list(s.remote_k_ranges); })
      .def_readonly("num_recv_tokens", &StagePlan::num_recv_tokens)
      .def_readonly("calc", &StagePlan::calc)
      .def_readonly("cast", &StagePlan::cast)
      .def("__repr__", [](const StagePlan& s) {
        return "StagePlan(num_recv_tokens=" + std::to_string(s.num_recv_tokens) + ", calc=" + s.calc.repr() +
               ", cast=" + s.cast.repr() + ")";
      });

  py::class_<RankPlan, std::shared_ptr<RankPlan>>(m, "RankPlan", "One rank's host stage and remote stages.")
      .def_readonly("rank", &RankPlan::rank)
      .def_property_readonly("host_q_ranges", [](const RankPlan& p) { return ranges_to_list(p.host_q_ranges); })
      .def_property_readonly("host_k_ranges", [](const RankPlan& p) { return ranges_to_list(p.host_k_ranges); })
      .def_property_readonly("remote_k_ranges", [](const RankPlan& p) { return ranges_to_list(p.remote_k_ranges); })
      .def_readonly("host_calc", &RankPlan::host_calc)
      .def_readonly("stages", &RankPlan::stages)
      .def("__repr__", &RankPlan::repr);

  py::class_<DistAttnPlan>(m, "DistAttnPlan", "Every requested rank's plan; num_stages is the same for all ranks.")
      .def_readonly("cp_size", &DistAttnPlan::cp_size)
      .def_readonly("num_stages", &DistAttnPlan::num_stages)
      .def_property_readonly("built_ranks", &DistAttnPlan::built_ranks)
      .def(
          "rank_plan",
          [](const DistAttnPlan& p, int64_t r) {
            p.rank_plan(r);  // RangeError unless built
            return std::const_pointer_cast<RankPlan>(p.plans[static_cast<size_t>(r)]);
          },
          py::arg("rank"), "This rank's plan (shared, read-only); RangeError when it was not built.")
      .def(
          "flat_calls",
          [](const DistAttnPlan& p, bool with_slices) {
            // every rank's kernel calls (host stage, then each remote stage) in flat arrays: what a
            // cost model reads of a plan, in one call instead of a walk over ranks, stages and calls
            const auto cp = static_cast<py::ssize_t>(p.cp_size);
            const auto per_rank = static_cast<py::ssize_t>(1 + p.num_stages);
            py::array_t<int64_t> area({cp, per_rank}), recv({cp});
            int64_t *ap = area.mutable_data(), *rp = recv.mutable_data();
            py::ssize_t n = 0;
            for (py::ssize_t r = 0; r < cp; ++r) {
              const RankPlan& rank = p.rank_plan(r);  // RangeError unless every rank was built
              MAGI_CHECK(static_cast<py::ssize_t>(rank.stages.size()) + 1 == per_rank,
                         "DistAttnPlan.flat_calls(): rank " << r << " has " << rank.stages.size()
                                                            << " stages, not num_stages=" << p.num_stages << ".");
              rp[r] = 0;
              for (py::ssize_t j = 0; j < per_rank; ++j) {
                const CalcArgs& c = j == 0 ? rank.host_calc : rank.stages[j - 1].calc;
                ap[r * per_rank + j] = c.area;
                if (with_slices && c.area) {
                  check_int32(c);
                  n += static_cast<py::ssize_t>(c.slices.size());
                }
                if (j > 0) rp[r] += rank.stages[j - 1].num_recv_tokens;
              }
            }
            auto q = int32_array({n, 2}), k = int32_array({n, 2});
            auto t = int32_array({n}), call = int32_array({n});
            int32_t *qp = q.mutable_data(), *kp = k.mutable_data(), *tp = t.mutable_data(), *cl = call.mutable_data();
            py::ssize_t i = 0;
            for (py::ssize_t r = 0; with_slices && r < cp; ++r) {
              const RankPlan& rank = p.rank_plan(r);
              for (py::ssize_t j = 0; j < per_rank; ++j) {
                const CalcArgs& c = j == 0 ? rank.host_calc : rank.stages[j - 1].calc;
                if (!c.area) continue;  // an empty call costs nothing: its slices are left out
                for (const auto& s : c.slices) {
                  qp[2 * i] = static_cast<int32_t>(s.qs), qp[2 * i + 1] = static_cast<int32_t>(s.qe);
                  kp[2 * i] = static_cast<int32_t>(s.ks), kp[2 * i + 1] = static_cast<int32_t>(s.ke);
                  tp[i] = static_cast<int32_t>(s.type);
                  cl[i] = static_cast<int32_t>(r * per_rank + j);
                  ++i;
                }
              }
            }
            return py::make_tuple(area, recv, q, k, t, call);
          },
          py::arg("with_slices") = true, R"doc(
Every rank's kernel calls in flat arrays (every rank must be built): (area int64 [cp, 1 + num_stages]:
call j of rank r, 0 the host stage; recv int64 [cp]: K/V tokens the rank's stages receive; q int32
[N, 2], k int32 [N, 2], mask types int32 [N], call int32 [N]: the slices of every non-empty call and
the call each belongs to, r * (1 + num_stages) + j). with_slices=False: no slices (N = 0). Why: the
cost-aware dispatch weighs ~40 candidate plans per key; walking each from Python cost as much as
planning it.
)doc")
      .def("__repr__", &DistAttnPlan::repr);

  m.def(
      "make_dist_attn_plan",
      [](const RangePairs& q_ranges, const RangePairs& k_ranges, const std::vector<int64_t>& mask_types,
         const DispatchMeta& dispatch_meta, const OverlapParams& overlap,
         std::optional<std::vector<int64_t>> ranks) {
        std::vector<int64_t> rs;
        if (ranks) {
          MAGI_CHECK(!ranks->empty(), "make_dist_attn_plan(): ranks=[] selects nothing; pass None for all ranks.");
          rs = *ranks;
        }
        py::gil_scoped_release release;
        return make_dist_attn_plan(q_ranges, k_ranges, mask_types, dispatch_meta, overlap, rs);
      },
      py::arg("q_ranges"), py::arg("k_ranges"), py::arg("mask_types"), py::arg("dispatch_meta"),
      py::arg("overlap") = OverlapParams(), py::arg("ranks") = py::none(),
      R"doc(
Static distributed attention plan (KV-only communication) of the listed ranks (all when None),
computed locally from the replicated mask and dispatch meta: identical on every rank.
)doc");
}

}  // namespace magi::bindings
