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

    /** The stages of layerwise/stages.json, in its order. */
    static Map stageManifest(Path root) {
        return new groovy.json.JsonSlurperClassic().parse(root.resolve('layerwise/stages.json').toFile()) as Map
    }

    /**
     * One SHA-256 per stage of layerwise/stages.json: over the files the stage runs, i.e. the `shared`
     * folders, the stage's own folder, the packages it `uses`, its commands and its assets (relative name +
     * content, sorted). A task gets its stage's digest as a `val` input, so -resume re-runs it exactly when
     * that code changes: editing the analysis never re-runs extraction, editing extraction always does.
     */
    static Map<String, String> stageDigests(Path root) {
        Map manifest = stageManifest(root)
        List<String> shared = (manifest.shared ?: []) as List<String>
        Map<String, String> out = [:]
        (manifest.stages as Map).each { name, s ->
            Map stage = s as Map
            List<String> include = shared + ["layerwise/${name}/".toString()] +
                ((stage.uses ?: []) as List).collect { "layerwise/${it}/".toString() } +
                ((stage.commands ?: []) as List).collect { "layerwise/commands/${it}.py".toString() } +
                ((stage.assets ?: []) as List).collect { it.toString() }
            out[name.toString()] = sourceDigest(root, include)
        }
        return out
    }

    /**
     * SHA-256 over the sorted files named by `include` (paths relative to root; a trailing / means every
     * file under that folder: its .py files for a folder of the layerwise package, all files otherwise,
     * e.g. assets/lexicon/), relative name + content.
     */
    static String sourceDigest(Path root, List<String> include) {
        List<Path> files = []
        include.each { String inc ->
            Path p = root.resolve(inc)
            if (inc.endsWith('/')) {
                if (!Files.isDirectory(p)) return
                boolean pythonOnly = inc.startsWith('layerwise/')
                def stream = Files.walk(p)
                try {
                    stream.filter { Path f -> Files.isRegularFile(f) && (!pythonOnly || f.toString().endsWith('.py')) && !f.toString().contains('__pycache__') }
                          .forEach { Path f -> files << f }
                } finally {
                    stream.close()
                }
            } else if (Files.isRegularFile(p)) {
                files << p
            }
        }
        MessageDigest md = MessageDigest.getInstance('SHA-256')
        files.unique().collect { Path p -> [root.relativize(p).toString().replace('\\', '/'), p] }
             .sort { it[0] }
             .each { rel, Path p ->
                 md.update(rel.toString().getBytes('UTF-8')); md.update((byte) 0)
                 md.update(Files.readAllBytes(p)); md.update((byte) 0)
             }
        return md.digest().encodeHex().toString()
    }

    /**
     * plan.json (parsed) -> one meta map per work unit, as PREFLIGHT named it (layerwise/preflight/plan.py owns
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
     * with more than one '/'. The same rule as layerwise.models.loading.looks_like_path (tests/unit/test_local_path.py).
     */
    static boolean looksLikePath(String s) {
        return s.startsWith('/') || s.startsWith('./') || s.startsWith('../') || s.startsWith('~') ||
               s.count('/') > 1 || s in ['.', '..']
    }

    /**
     * [status, verified layer files] from <outdir>/extraction_metadata.json, as PUBLISH_RESULTS wrote it:
     * the files it placed and verified (layerwise.publish.outdir names them; nothing is matched by file name here).
     */
    /**
     * The SAEs an earlier run published in <outdir>/sae/ and recorded (sae/inputs.json, written last by PUBLISH_SAE):
     * [folders: layer_{L}[_{language}]/ sorted by layer then language (as SAE_TRAINING emits them), record: the
     * record's path]; no folders and a null record when there is no complete, recorded set.
     */
    static Map publishedSaes(Path outdir) {
        Path root = outdir.resolve(LayerwiseOutdir.name('sae_dir'))
        Path record = root.resolve(LayerwiseOutdir.name('stage_record'))
        if (!Files.isRegularFile(record)) return [folders: [], record: null]
        List<Path> folders = []
        Files.newDirectoryStream(root).withCloseable { stream ->
            stream.each { Path p -> if (Files.isDirectory(p) && p.fileName.toString() ==~ /layer_\d+(_.+)?/) folders << p }
        }
        def key = { Path p ->
            def m = p.fileName.toString() =~ /layer_(\d+)(?:_(.+))?/
            m.matches() ? [m.group(1) as int, m.group(2) ?: 'pooled'] : [Integer.MAX_VALUE, p.fileName.toString()]
        }
        folders.sort { a, b -> (key(a)[0] <=> key(b)[0]) ?: (key(a)[1] <=> key(b)[1]) }
        return [folders: folders, record: folders ? record : null]
    }

    static Map verifiedLayerFiles(Path outdir) {
        try {
            Path meta = outdir.resolve(LayerwiseOutdir.name('metadata'))
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
