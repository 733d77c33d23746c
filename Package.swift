// swift-tools-version: 6.0
import Foundation
import PackageDescription

/// Open MPI (Debian's libopenmpi-dev, which scripts/setup installs) for tensor parallelism
/// over processes and hosts. Where its header is absent, the MPI module builds without it
/// and Facet runs as one process; FACET_WITHOUT_MPI=1 builds that way on purpose.
let mpiHeader: String? = {
    guard ProcessInfo.processInfo.environment["FACET_WITHOUT_MPI"] == nil else { return nil }
    let multiarch = ((try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib")) ?? []).filter { $0.hasSuffix("-linux-gnu") }
    let candidates = multiarch.map { "/usr/lib/\($0)/openmpi/include/mpi.h" } + ["/usr/include/openmpi/mpi.h", "/opt/homebrew/include/mpi.h", "/usr/local/include/mpi.h"]
    return candidates.first { FileManager.default.fileExists(atPath: $0) }
}()
let mpiTargets: [Target] = mpiHeader == nil ? [] : [
    .systemLibrary(name: "CMPI", pkgConfig: "ompi-c", providers: [.apt(["libopenmpi-dev"]), .brew(["open-mpi"])]),
]

/// Swift code is compiled for the baseline of its architecture (no CPU is pinned): the hot
/// loops live in the C kernels (CKernels), which choose their instruction-set tier at run
/// time (portable C, AVX2+FMA+F16C, AVX-512, VNNI). The Swift modules that drive them are
/// compiled with -Ounchecked in release builds; debug builds keep bounds checks.
let kernelFlags: [SwiftSetting] = [
    .unsafeFlags(["-Ounchecked"], .when(configuration: .release))
]

/// Parsers of outside data (Formats) keep Swift's overflow and bounds traps (-O, not
/// -Ounchecked); their size and offset arithmetic is also checked explicitly (`Checked`).
let parserFlags: [SwiftSetting] = []

let package = Package(
    name: "Facet",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "facet", targets: ["FacetCLI"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/grpc/grpc-swift-2", from: "2.4.3"),
        .package(url: "https://github.com/grpc/grpc-swift-nio-transport", from: "2.9.2"),
        .package(url: "https://github.com/grpc/grpc-swift-protobuf", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
    ],
    targets: [
        .target(name: "Tensors", swiftSettings: kernelFlags),
        .target(name: "CKernels", cSettings: [.unsafeFlags(["-O3", "-ffp-contract=off"])]),
        .target(name: "Kernels", dependencies: ["Tensors", "CKernels"], swiftSettings: kernelFlags),
        .target(name: "Formats", dependencies: ["Tensors"], swiftSettings: parserFlags),
        .target(name: "Tokenization", dependencies: ["Tensors"]),
        .target(name: "PagedKV"),
        .target(name: "Scheduling", dependencies: ["PagedKV"]),
        .target(name: "Llama", dependencies: ["Tensors", "Kernels", "PagedKV"], swiftSettings: kernelFlags),
        .target(name: "Adapters", dependencies: ["Tensors", "Kernels", "Llama"], swiftSettings: kernelFlags),
        .target(name: "Sampling", dependencies: ["Tensors", "Kernels"], swiftSettings: kernelFlags),
        .target(name: "Loading", dependencies: ["Tensors", "Kernels", "Formats", "Tokenization", "Llama", "Adapters"]),
        // MPI for tensor parallelism (CMPI is present only where Open MPI is installed).
        .target(name: "MPI", dependencies: ["Tensors"] + (mpiHeader == nil ? [] : ["CMPI"])),
        // LoRA training on the CPU (facet tune): backward pass, optimizer, datasets.
        .target(name: "Training", dependencies: ["Llama", "Adapters", "Kernels", "Tensors", "Tokenization", "Sampling"], swiftSettings: kernelFlags),
        .target(name: "TensorParallel", dependencies: ["MPI", "Llama", "Adapters", "Kernels", "Tensors"]),
        .target(name: "Engine", dependencies: ["Tensors", "Kernels", "Llama", "Adapters", "PagedKV", "Scheduling", "Sampling", "Tokenization", "Loading"]),
        // Swift code generated from Triton's grpc_service.proto and model_config.proto
        // (scripts/gen-triton-grpc regenerates it); committed, never edited by hand.
        .target(
            name: "TritonProtos",
            dependencies: [
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
            ]
        ),
        .target(
            name: "Server",
            dependencies: [
                "Engine", "Llama", "Sampling", "Tokenization", "Tensors", "Adapters", "Formats", "Loading",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2Posix", package: "grpc-swift-nio-transport"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                "TritonProtos",
            ]
        ),
        // Benchmark code (facet bench): engine throughput and numerics accuracy.
        .target(name: "Benchmarks", dependencies: ["Adapters", "Kernels", "Llama", "PagedKV", "Sampling", "Tensors", "Engine"], swiftSettings: kernelFlags),
        .target(
            name: "ServingBench",
            dependencies: [
                "Sampling", "TritonProtos", .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2Posix", package: "grpc-swift-nio-transport"),
            ]
        ),
        // Test support: counts heap allocations (a malloc interposer forwarding to glibc).
        .target(name: "AllocationCounter", path: "Tests/AllocationCounter"),
        .executableTarget(
            name: "FacetCLI",
            dependencies: [
                "Engine", "Loading", "Formats", "Tokenization", "Sampling", "Llama", "Adapters", "Server", "Scheduling", "Kernels", "ServingBench", "Benchmarks",
                "TensorParallel", "Training",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .target(name: "TestSupport", dependencies: ["Tensors", "Formats", "Llama", "Loading"], path: "Tests/TestSupport"),
        .testTarget(name: "AdaptersTests", dependencies: ["Adapters", "Tensors", "Loading", "Engine", "Llama", "Sampling", "Formats", "Kernels", "TestSupport"]),
        .testTarget(name: "KernelsTests", dependencies: ["Kernels", "Tensors", "Formats", "TestSupport"]),
        .testTarget(name: "FormatsTests", dependencies: ["Formats", "Tensors", "TestSupport"]),
        .testTarget(name: "TokenizationTests", dependencies: ["Tokenization", "Tensors", "Loading", "TestSupport"]),
        .testTarget(name: "LlamaTests", dependencies: ["Llama", "Loading", "Engine", "Benchmarks", "Scheduling", "Sampling", "PagedKV", "TestSupport", "AllocationCounter", "Kernels", "Adapters"]),
        .testTarget(name: "SamplingTests", dependencies: ["Sampling"]),
        .testTarget(name: "SchedulingTests", dependencies: ["Scheduling", "PagedKV"]),
        .testTarget(name: "EngineTests", dependencies: ["Engine", "Benchmarks", "Adapters", "Llama", "Loading", "Sampling", "Scheduling", "Tensors", "TestSupport", "Tokenization", "Formats"]),
        .testTarget(name: "TensorParallelTests", dependencies: ["TensorParallel", "Engine", "Adapters", "Llama", "Loading", "Sampling", "Kernels", "Tensors", "TestSupport"]),
        .testTarget(name: "TrainingTests", dependencies: ["Training", "Adapters", "Llama", "Loading", "Kernels", "Tensors", "TestSupport", "Tokenization"]),
        .testTarget(name: "CLITests", dependencies: ["TestSupport", "Formats"]),
    ] + mpiTargets
)
