//
// Helpers for the layerwise workflow: source digest for -resume, plan.json -> work units,
// software-versions collation, completion summary. Plain Groovy, no Nextflow classes needed.
//

import groovy.json.JsonOutput
import java.nio.file.Files
import java.nio.file.Path
import java.security.MessageDigest
import org.yaml.snakeyaml.DumperOptions
import org.yaml.snakeyaml.Yaml

class LayerwiseUtils {

    /**
     * Python modules used only after the layer files exist (validation, HTML report, test fixtures).
     * They are left out of the digest given to PREFLIGHT's downstream GPU/merge steps, so that editing
     * the report does not re-run hours of extraction on -resume. The extraction and merge code must
     * therefore never import them.
     */
    static final List<String> DOWNSTREAM_ONLY = ['layerwise/validate.py', 'layerwise/report.py', 'layerwise/fixtures.py',
                                                 'layerwise/validation/', 'layerwise/publish.py', 'layerwise/merge.py',
                                                 'layerwise/params_schema.py', 'layerwise/commands/analyze.py',
                                                 'layerwise/commands/validate.py', 'layerwise/commands/publish.py',
                                                 'layerwise/commands/publish_sae.py', 'layerwise/commands/train_sae.py',
                                                 'layerwise/commands/make_fixtures.py',
                                                 'layerwise/analysis/', 'layerwise/sae/']

    // The sources TRAIN_SAE runs (bin/layerwise-train-sae imports nothing else of layerwise; a test checks it)
    static final List<String> SAE_SOURCES = ['layerwise/__init__.py', 'layerwise/cli.py', 'layerwise/errors.py',
                                             'layerwise/schema.py', 'layerwise/sae/',
                                             'layerwise/commands/__init__.py', 'layerwise/commands/train_sae.py']

    /**
     * SHA-256 over the sorted files layerwise/**.py and assets/prompts.json (relative name + content),
     * minus `exclude` (relative paths; a trailing / means a folder), or only those in `include`. Passed to processes as a `val` input so that -resume re-runs
     * them when the Python package changes (bin/ scripts are hashed by Nextflow itself).
     */
    static String sourceDigest(Path root, List<String> exclude = [], List<String> include = null) {
        List<Path> files = []
        Path pkg = root.resolve('layerwise')
        if (Files.isDirectory(pkg)) {
            def stream = Files.walk(pkg)
            try {
                stream.filter { Path p -> Files.isRegularFile(p) && p.toString().endsWith('.py') && !p.toString().contains('__pycache__') }
                      .forEach { Path p -> files << p }
            } finally {
                stream.close()
            }
        }
        Path prompts = root.resolve('assets/prompts.json')
        if (Files.isRegularFile(prompts)) files << prompts
        MessageDigest md = MessageDigest.getInstance('SHA-256')
        files.collect { Path p -> [root.relativize(p).toString().replace('\\', '/'), p] }
             .findAll { rel -> !exclude.any { ex -> ex.endsWith('/') ? rel[0].startsWith(ex) : rel[0] == ex } }
             .findAll { rel -> include == null || include.any { inc -> inc.endsWith('/') ? rel[0].startsWith(inc) : rel[0] == inc } }
             .sort { it[0] }
             .each { rel, Path p ->
                 md.update(rel.toString().getBytes('UTF-8')); md.update((byte) 0)
                 md.update(Files.readAllBytes(p)); md.update((byte) 0)
             }
        return md.digest().encodeHex().toString()
    }

    /**
     * plan.json (parsed) -> one meta map per work unit, as PREFLIGHT named it (layerwise/plan.py owns
     * unit ids, compact layer lists and sheet names):
     *   [id, layers (List<int>), layers_str, language, shard (int), rows ("START:END"), sheet, model_fingerprint]
     * Checks the invariant the graph relies on: every (layer, language) of the plan is produced, and
     * every (layer, language, shard) by exactly one unit.
     */
    static List<Map> units(Map plan) {
        List units = (plan.units ?: []) as List
        if (!units) throw new IllegalStateException('plan.json has no work units')
        List<Integer> planLayers = ((plan.layers ?: []) as List).collect { it as int }
        List<String> languages = ((plan.languages ?: []) as List).collect { it.toString() }
        Set<List> seen = new HashSet<>()
        Set<List> covered = new HashSet<>()
        units.each { Map u ->
            if (!u.id || !u.sheet || !u.layers) throw new IllegalStateException("plan.json: incomplete unit ${u}")
            ((u.layers ?: []) as List).each { l ->
                if (!seen.add([l as int, u.language.toString(), u.shard as int]))
                    throw new IllegalStateException("plan.json: layer ${l}, language ${u.language}, shard ${u.shard} is in more than one unit")
                covered << [l as int, u.language.toString()]
            }
        }
        languages.each { lang ->
            def missing = planLayers.findAll { !covered.contains([it, lang]) }
            if (missing) throw new IllegalStateException("plan.json: no unit extracts layer(s) ${missing} for ${lang}")
        }
        String fingerprint = (plan.model?.fingerprint ?: '').toString()
        return units.collect { Map u ->
            [
                id               : u.id.toString(),
                layers           : ((u.layers ?: []) as List).collect { it as int },
                layers_str       : u.layers_str.toString(),
                language         : u.language.toString(),
                shard            : u.shard as int,
                rows             : u.rows?.toString(),
                sheet            : u.sheet.toString(),
                model_fingerprint: fingerprint,
            ]
        }
    }

    /**
     * Merge the per-task versions.yml texts into one YAML document (one entry per process, values
     * that differ between tasks joined with ', '), plus a Workflow entry.
     */
    static String versionsYaml(List<String> texts, String nextflowVersion, String pipelineVersion) {
        Map<String, Map<String, Set<String>>> merged = new TreeMap<>()
        texts.each { String t ->
            def doc = new Yaml().load(t)
            if (!(doc instanceof Map)) return
            (doc as Map).each { proc, tools ->
                String name = proc.toString().tokenize(':').last()
                Map<String, Set<String>> m = merged.computeIfAbsent(name) { new TreeMap<>() }
                (tools instanceof Map ? tools as Map : [:]).each { k, v ->
                    m.computeIfAbsent(k.toString()) { new LinkedHashSet<>() } << String.valueOf(v)
                }
            }
        }
        Map out = new LinkedHashMap()
        merged.each { p, tools -> out[p] = tools.collectEntries { k, vs -> [k, vs.join(', ')] } }
        out['Workflow'] = [Nextflow: nextflowVersion, layerwise: pipelineVersion]
        DumperOptions o = new DumperOptions()
        o.setDefaultFlowStyle(DumperOptions.FlowStyle.BLOCK)
        o.setPrettyFlow(true)
        return new Yaml(o).dump(out)
    }

    /** Parameters as pretty JSON (values that are not JSON scalars are written as strings). */
    static String paramsJson(Map params) {
        Map clean = new TreeMap()
        params.each { k, v ->
            clean[k.toString()] = (v == null || v instanceof CharSequence || v instanceof Number || v instanceof Boolean) ?
                (v instanceof CharSequence ? v.toString() : v) : v.toString()
        }
        return JsonOutput.prettyPrint(JsonOutput.toJson(clean))
    }

    /**
     * "--model names a local folder, not a hub id (owner/name)": absolute, relative to . / .. or ~, or
     * with more than one '/'. The same rule as layerwise.model.looks_like_path (tests/test_local_path.py).
     */
    static boolean looksLikePath(String s) {
        return s.startsWith('/') || s.startsWith('./') || s.startsWith('../') || s.startsWith('~') ||
               s.count('/') > 1 || s in ['.', '..']
    }

    /**
     * [status, verified layer files] from <outdir>/extraction_metadata.json, as PUBLISH_RESULTS wrote it:
     * the files it placed and verified (layerwise.publish names them; nothing is matched by file name here).
     */
    static Map verifiedLayerFiles(Path outdir) {
        try {
            Path meta = outdir.resolve(LayerwiseOutdir.METADATA)
            if (!Files.isRegularFile(meta)) return [status: 'missing', files: 0]
            Map m = new groovy.json.JsonSlurper().parse(meta.toFile()) as Map
            int n = (m.status in ['passed', 'stub']) ? (m.published ?: []).count { it instanceof Map && it.layer != null } as int : 0
            return [status: m.status ?: 'unknown', files: n]
        } catch (Exception e) {
            return [status: "unreadable (${e.message})".toString(), files: 0]
        }
    }

    /**
     * The line of a failed run's error message that says what went wrong: a layerwise `ERROR: ...`
     * line, else the last Python exception line of the task's stderr (not a progress bar, a
     * "Traceback" header or a hub warning), else the first line.
     */
    static String errorLine(String message) {
        if (!message) return null
        List<String> lines = message.readLines().collect { it.replaceAll(/\033\[[0-9;]*m/, '').trim() }.findAll { it }
        int at = lines.findIndexOf { it.startsWith('ERROR: ') && !it.startsWith('ERROR ~') }
        if (at >= 0) {   // a message that lists its problems below a header: show the first one too
            String ours = lines[at].substring(7)
            return ours.endsWith(':') && at + 1 < lines.size() ? "${ours} ${lines[at + 1].replaceFirst(/^[-*] /, '')}".toString() : ours
        }
        def noise = { String l -> l.contains('\r') || l =~ /\d+%\|/ || l =~ /it\/s\]/ || l.startsWith('Traceback') ||
                                  l.startsWith('File "') || l =~ /(?i)warn/ }
        String exc = lines.reverse().find { it =~ /^([A-Za-z_][\w.]*)(Error|Exception|Interrupt|Exit)\b.*/ && !noise(it) }
        if (exc) return exc
        String failed = lines.find { it =~ /(?i)(out of memory|killed|no space left|permission denied)/ }
        return failed ?: lines[0]
    }

    /** Command line to resume a run: the original one plus -resume (once). */
    static String resumeCommand(String commandLine) {
        String cmd = commandLine?.trim() ?: 'nextflow run <pipeline> <same options>'
        return cmd =~ /(^|\s)-resume(\s|$)/ ? cmd : "${cmd} -resume"
    }
}
