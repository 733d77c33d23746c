import Foundation
internal import CKernels

package enum Norm {
    /// Semantics: for each row t of `x: [T, D]`,
    /// `y[t, d] = x[t, d] / sqrt(mean_d(x[t]^2) + eps) * weight[d]` (Llama RMSNorm, fp32).
    /// `y` may alias `x`.
    package static func rms(
        x: UnsafePointer<Float>, weight: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
        rows T: Int, dim D: Int, eps: Float
    ) {
        // Rows are independent: split across threads for large batches.
        let job = RowsJob(x: x, weight: weight, y: y, dim: D, eps: eps, split: Parallel.Split(T, work: T * D * 2))
        Parallel.run(job.split.parts, job)
    }

    struct RowsJob: ParallelJob, @unchecked Sendable {
        let x: UnsafePointer<Float>, weight: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>
        let dim: Int, eps: Float
        let split: Parallel.Split

        static let entry: @convention(c) (UnsafeMutableRawPointer?, Int32) -> Void = { job, task in
            job!.assumingMemoryBound(to: RowsJob.self).pointee.run(Int(task))
        }

        func run(_ task: Int) {
            let D = dim
            for t in split.range(task) {
                let xr = x + t * D, yr = y + t * D
                let sumSquares = dot(xr, xr, D)
                let inv = 1 / (sumSquares / Float(D) + eps).squareRoot()
                for d in 0..<D { yr[d] = (xr[d] * inv) * weight[d] }
            }
        }
    }
}

package enum Activation {
    /// Semantics: `gate[i] = silu(gate[i]) * up[i]` with `silu(v) = v / (1 + exp(-v))`,
    /// `exp` being `VectorMath.exp` (every element the same arithmetic).
    package static func siluMul(gate: UnsafeMutablePointer<Float>, up: UnsafePointer<Float>, count: Int) {
        // Elementwise, so splitting across threads changes no result.
        let job = SiluJob(gate: gate, up: up, split: Parallel.Split(count, granule: 256, work: count * 8))
        Parallel.run(job.split.parts, job)
    }

    /// The gradients of `siluMul` (without its in-place write): with `s = 1 / (1 + exp(-g))`,
    /// `dUp[i] = (da[i] g) s` and `dGate[i] = ((da[i] up[i]) s) (1 + g (1 - s))` for
    /// `g = gate[i]`, every element the same arithmetic on every tier and split.
    package static func siluMulBackward(gate: UnsafePointer<Float>, up: UnsafePointer<Float>, dOut: UnsafePointer<Float>,
                                        dGate: UnsafeMutablePointer<Float>, dUp: UnsafeMutablePointer<Float>, count: Int) {
        let job = SiluBackJob(gate: gate, up: up, dOut: dOut, dGate: dGate, dUp: dUp, split: Parallel.Split(count, granule: 256, work: count * 12))
        Parallel.run(job.split.parts, job)
    }

    struct SiluBackJob: ParallelJob, @unchecked Sendable {
        let gate: UnsafePointer<Float>, up: UnsafePointer<Float>, dOut: UnsafePointer<Float>
        let dGate: UnsafeMutablePointer<Float>, dUp: UnsafeMutablePointer<Float>
        let split: Parallel.Split

        static let entry: @convention(c) (UnsafeMutableRawPointer?, Int32) -> Void = { job, task in
            job!.assumingMemoryBound(to: SiluBackJob.self).pointee.run(Int(task))
        }

        func run(_ task: Int) {
            let r = split.range(task), i = r.lowerBound
            fk_silu_mul_backward(gate + i, up + i, dOut + i, dGate + i, dUp + i, r.count)
        }
    }

    struct SiluJob: ParallelJob, @unchecked Sendable {
        let gate: UnsafeMutablePointer<Float>, up: UnsafePointer<Float>
        let split: Parallel.Split

        static let entry: @convention(c) (UnsafeMutableRawPointer?, Int32) -> Void = { job, task in
            job!.assumingMemoryBound(to: SiluJob.self).pointee.run(Int(task))
        }

        func run(_ task: Int) {
            let range = split.range(task)
            fk_silu_mul(gate + range.lowerBound, up + range.lowerBound, range.count)
        }
    }
}
