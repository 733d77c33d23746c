import Foundation

/// A dependency-free SVG bar chart of a bench report: one row per measurement, one bar per
/// numerics mode, throughput on a shared axis.
enum BenchChart {
    static func svg(_ report: BenchReport) -> String {
        let rows = report.results.filter { $0.tokensPerSecond > 0 }
        var names: [String] = []
        for r in rows where !names.contains(r.name) { names.append(r.name) }
        var modes: [String] = []
        for r in rows { let m = r.mode ?? "-"; if !modes.contains(m) { modes.append(m) } }
        let colors = ["#4C78A8", "#F58518", "#54A24B", "#B279A2"]
        let barH = 14.0, gap = 8.0, left = 300.0, width = 480.0, top = 56.0
        let groupH = Double(max(modes.count, 1)) * barH + gap
        let height = top + Double(names.count) * groupH + 30
        let maxValue = max(rows.map(\.tokensPerSecond).max() ?? 1, 1)
        func esc(_ s: String) -> String {
            s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
        }
        var out = """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(left + width + 120))" height="\(Int(height))" font-family="sans-serif" font-size="12">
        <rect width="100%" height="100%" fill="white"/>
        <text x="10" y="20" font-size="15" font-weight="bold">facet bench: tokens/s (\(esc(report.machine.cpu)), \(report.machine.threads) threads)</text>

        """
        for (i, m) in modes.enumerated() {
            let x = 10.0 + Double(i) * 110
            out += "<rect x=\"\(x)\" y=\"32\" width=\"12\" height=\"12\" fill=\"\(colors[i % colors.count])\"/>"
            out += "<text x=\"\(x + 16)\" y=\"43\">\(esc(m))</text>\n"
        }
        for (g, name) in names.enumerated() {
            let y0 = top + Double(g) * groupH
            out += "<text x=\"\(left - 8)\" y=\"\(y0 + groupH / 2)\" text-anchor=\"end\">\(esc(name))</text>\n"
            for (i, m) in modes.enumerated() {
                guard let r = rows.first(where: { $0.name == name && ($0.mode ?? "-") == m }) else { continue }
                let w = max(1, r.tokensPerSecond / maxValue * width), y = y0 + Double(i) * barH
                out += "<rect x=\"\(left)\" y=\"\(y)\" width=\"\(String(format: "%.1f", w))\" height=\"\(barH - 2)\" fill=\"\(colors[i % colors.count])\"/>"
                out += "<text x=\"\(String(format: "%.1f", left + w + 4))\" y=\"\(y + barH - 4)\">\(String(format: "%.0f", r.tokensPerSecond))</text>\n"
            }
        }
        return out + "</svg>\n"
    }
}
