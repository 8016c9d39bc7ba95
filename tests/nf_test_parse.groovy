/*
 * Checks the nf-test specs without nf-test (which no registry reachable here publishes):
 *   java -cp 'nextflow-runtime/lib/*' groovy.ui.GroovyMain tests/nf_test_parse.groovy [ROOT] [SPEC...]
 *
 * ROOT (default: the current directory) is the pipeline: its *.nf files define the processes and
 * workflows, its nextflow_schema.json the parameters. With no SPEC, every *.nf.test under ROOT and
 * ROOT/nf-test.config are checked. Per file:
 *   1. it compiles as Groovy;
 *   2. it evaluates with a recording stand-in of nf-test's DSL (nextflow_process / _workflow /
 *      _pipeline / _function, test, setup, run, when, params, process, workflow, then, expect,
 *      options, tag, config; `config { ... }` for nf-test.config): an unknown keyword or a block in
 *      the wrong place fails. `then` / `expect` blocks are recorded, not run (they need the results);
 *   3. against the pipeline:
 *      - `script "..."` exists (relative to the spec when it starts with '.', else to ROOT) and defines
 *        the `process "NAME"` / `workflow "NAME"` under test; same for every setup `run("NAME")`;
 *      - a `when { process { ... } }` (and each setup run) sets exactly input[0] .. input[n-1], n being
 *        the number of inputs (`take:` for a workflow) the process declares;
 *      - a meta map given literally as input[0] has every meta.KEY the process reads;
 *      - `process.out.X` / `workflow.out.X` / `RUN.out.X` name an emit of that process or workflow;
 *      - every parameter set in `params { ... }` is in nextflow_schema.json, with a value of the type
 *        the schema says (the standard JSON-schema meaning: 2 is not a string);
 *      - a process name compared in an assertion (`contains('NAME')`, `== 'NAME'`) exists in the pipeline;
 *      - paths written as ${baseDir}/... or ${projectDir}/... exist under ROOT;
 *      - nf-test.config: testsDir and configFile exist, profile is one of nextflow.config's profiles.
 * Prints one line per file (with the problems below it) and exits 1 if any file fails.
 */

import groovy.json.JsonSlurper
import groovy.transform.Field
import org.codehaus.groovy.control.CompilationFailedException
import org.codehaus.groovy.control.CompilerConfiguration

import java.nio.file.FileVisitResult
import java.nio.file.Files
import java.nio.file.Path
import java.nio.file.Paths
import java.nio.file.SimpleFileVisitor
import java.nio.file.attribute.BasicFileAttributes

// -- the recording stand-in of nf-test's DSL ---------------------------------------------------------

class DslError extends RuntimeException {
    DslError(String m) { super(m) }
}

abstract class Dsl {
    static Object eval(Closure body, Object delegate) {
        Closure c = (Closure) body.clone()
        c.delegate = delegate
        c.resolveStrategy = Closure.DELEGATE_FIRST
        return c.call()
    }

    // A call that no keyword of this block takes: a typo, or a keyword of another block
    def methodMissing(String name, Object args) {
        throw new DslError("`${name}` is not an nf-test keyword inside ${where()}")
    }

    abstract String where()
}

class ParamsDsl {
    Map recordedValues = [:]
    def propertyMissing(String name, Object value) { recordedValues[name] = value }
    def propertyMissing(String name) { throw new MissingPropertyException(name, ParamsDsl) }
}

class RunDsl extends Dsl {
    String name, alias, script, kind, inputs
    String where() { "run(\"${name}\")" }
    void script(String s) { script = s }
    void process(Closure c) { kind = 'process'; inputs = eval(c, this)?.toString() ?: '' }
    void workflow(Closure c) { kind = 'workflow'; inputs = eval(c, this)?.toString() ?: '' }
}

class SetupDsl extends Dsl {
    List<RunDsl> runs = []
    String where() { 'setup { }' }
    void run(String name, Closure c) { run([:], name, c) }
    void run(Map opts, String name, Closure c) {
        def r = new RunDsl(name: name, alias: opts.alias?.toString())
        eval(c, r)
        runs << r
    }
}

class WhenDsl extends Dsl {
    Map params = [:]
    String inputs, kind
    String where() { 'when { }' }
    void params(Closure c) { def p = new ParamsDsl(); eval(c, p); params.putAll(p.recordedValues) }
    void process(Closure c) { kind = 'process'; inputs = eval(c, this)?.toString() ?: '' }
    void workflow(Closure c) { kind = 'workflow'; inputs = eval(c, this)?.toString() ?: '' }
    void function(Closure c) { kind = 'function'; inputs = eval(c, this)?.toString() ?: '' }
}

class TestDsl extends Dsl {
    String name
    List<String> options = [], tags = []
    SetupDsl setup
    WhenDsl when
    boolean then, expect
    String where() { "test(\"${name}\")" }
    void options(String o) { options << o }
    void tag(String t) { tags << t }
    void config(String c) {}
    void profile(String p) {}
    void autoSort(boolean b) {}
    void debug(boolean b) {}
    void setup(Closure c) { setup = setup ?: new SetupDsl(); eval(c, setup) }
    void when(Closure c) { when = new WhenDsl(); eval(c, when) }
    void then(Closure c) { then = true }       // recorded, not run
    void expect(Closure c) { expect = true }   // recorded, not run
    void cleanup(Closure c) {}
}

class SpecDsl extends Dsl {
    String type, name, script, target, targetKind
    List<String> options = [], tags = [], configs = []
    SetupDsl setup
    List<TestDsl> tests = []
    String where() { type + ' { }' }
    void name(String n) { name = n }
    void script(String s) { script = s }
    void process(String p) { target = p; targetKind = 'process' }
    void workflow(String w) { target = w; targetKind = 'workflow' }
    void function(String f) { target = f; targetKind = 'function' }
    void tag(String t) { tags << t }
    void options(String o) { options << o }
    void config(String c) { configs << c }
    void profile(String p) {}
    void autoSort(boolean b) {}
    void setup(Closure c) { setup = setup ?: new SetupDsl(); eval(c, setup) }
    void test(String n, Closure c) { def t = new TestDsl(name: n); eval(c, t); tests << t }
}

class ConfigDsl extends Dsl {
    Map settings = [:]
    String where() { 'config { }' }
    void testsDir(String s) { settings.testsDir = s }
    void workDir(String s) { settings.workDir = s }
    void configFile(String s) { settings.configFile = s }
    void profile(String s) { settings.profile = s }
    void libDir(String s) { settings.libDir = s }
    void options(String s) { settings.options = s }
    void plugins(Closure c) {}
    void ignore(String... s) { settings.ignore = s as List }
    void triggers(String... s) { settings.triggers = s as List }
    void requires(Map m) { settings.requires = m }
    void withTrace(boolean b) {}
    void autoSort(boolean b) {}
    void stage(Closure c) {}
}

// -- the pipeline ------------------------------------------------------------------------------------

@Field List<String> skip = ['.git', '.nf-test', '.nextflow', '.venv', '.venv-nfcore', 'work', 'nextflow-runtime', 'node_modules',
                             'results', 'fixtures', '__pycache__', '.pytest_cache']

@Field Path root = null
List<Path> specs = []
args.each { String a ->
    Path p = Paths.get(a).toAbsolutePath().normalize()
    if (Files.isDirectory(p) && root == null) root = p
    else specs << p
}
root = root ?: Paths.get('.').toAbsolutePath().normalize()

/** Regular files under dir whose name passes `keep`, not descending into the folders of `skip`. */
List<Path> walk(Path dir, Closure<Boolean> keep) {
    List<Path> found = []
    Files.walkFileTree(dir, new SimpleFileVisitor<Path>() {
        FileVisitResult preVisitDirectory(Path d, BasicFileAttributes a) {
            d != dir && d.fileName.toString() in skip ? FileVisitResult.SKIP_SUBTREE : FileVisitResult.CONTINUE
        }
        FileVisitResult visitFile(Path f, BasicFileAttributes a) {
            if (a.isRegularFile() && keep(f)) found << f
            FileVisitResult.CONTINUE
        }
        FileVisitResult visitFileFailed(Path f, IOException e) { FileVisitResult.CONTINUE }
    })
    found.sort()
}

if (!specs) {
    specs = walk(root) { Path p -> p.fileName.toString().endsWith('.nf.test') || (p.parent == root && p.fileName.toString() == 'nf-test.config') }
}
if (!specs) {
    System.err.println("nf_test_parse: no *.nf.test files under ${root}")
    System.exit(1)
}

// Text without line comments, and without block comments that open a line (a glob such as
// units/STAR.csv inside a string opens no comment)
String stripComments(String text) {
    text.replaceAll(/(?ms)^\s*\/\*.*?\*\//, '').readLines().collect { it.replaceAll(/(^|\s)\/\/.*$/, '') }.join('\n')
}

/** The sections (input:, output:, take:, emit:, ...) of one process or workflow body. */
Map<String, String> sections(String body) {
    Map<String, String> out = [:]
    def m = body =~ /(?m)^\s*(input|output|when|script|shell|exec|stub|take|main|emit):\s*$/
    List starts = []
    while (m.find()) starts << [m.group(1), m.start(), m.end()]
    starts.eachWithIndex { s, i ->
        int end = i + 1 < starts.size() ? starts[i + 1][1] : body.length()
        out[s[0]] = body.substring(s[2], end)
    }
    out
}

/** name -> [kind:, file:, inputs: n, emits: [...], meta: [keys read from meta]] for every process/workflow under dir. */
Map<String, Map> definitions(Path dir, Map<Path, Map<String, Map>> cache) {
    Path f = dir
    if (cache.containsKey(f)) return cache[f]
    Map<String, Map> defs = [:]
    List<Path> files = []
    if (Files.isRegularFile(f)) files << f
    else files = walk(f) { Path p -> p.fileName.toString().endsWith('.nf') }
    files.each { Path nf ->
        String text = stripComments(nf.text)
        def heads = text =~ /(?m)^\s*(process|workflow)\s+([A-Za-z0-9_]+)\s*\{/
        while (heads.find()) {
            String kind = heads.group(1), name = heads.group(2)
            // the body ends at the first closing brace in column 0 (how .nf files close a process/workflow)
            def close = text.substring(heads.end()) =~ /(?m)^\}/
            String body = close.find() ? text.substring(heads.end(), heads.end() + close.start()) : text.substring(heads.end())
            Map<String, String> sec = sections(body)
            int inputs
            List<String> emits
            if (kind == 'process') {
                inputs = (sec.input ?: '').readLines().count { it.trim() ==~ /^(tuple|path|val|env|file|stdin|each)\b.*/ } as int
                emits = ((sec.output ?: '') =~ /emit:\s*([A-Za-z0-9_]+)/).collect { it[1] }
            } else {
                inputs = (sec.take ?: '').readLines().count { it.trim() ==~ /^[A-Za-z_][A-Za-z0-9_]*$/ } as int
                emits = (sec.emit ?: '').readLines().collect { (it.trim() =~ /^([A-Za-z_][A-Za-z0-9_]*)\s*(=.*)?$/).with { it.find() ? it.group(1) : null } }.findAll()
            }
            List<String> meta = (body =~ /\bmeta\.([A-Za-z_][A-Za-z0-9_]*)/).collect { it[1] }.unique()
            defs[name] = [kind: kind, file: nf, inputs: inputs, emits: emits, meta: meta]
        }
    }
    cache[f] = defs
    defs
}

Map<Path, Map<String, Map>> defCache = [:]
Map<String, Map> pipelineDefs = definitions(root, defCache)

// Parameters: name -> JSON-schema type (a string or a list)
Map<String, Object> schemaTypes = [:]
Path schemaFile = root.resolve('nextflow_schema.json')
if (Files.isRegularFile(schemaFile)) {
    def schema = new JsonSlurper().parse(schemaFile.toFile())
    (((schema.'$defs' ?: schema.definitions ?: [:]) as Map).values().collect { it.properties ?: [:] } + [schema.properties ?: [:]]).each { Map props ->
        props.each { k, v -> schemaTypes[k as String] = v.type ?: 'string' }
    }
}

String jsonType(Object v) {
    if (v == null) return 'null'
    if (v instanceof Boolean) return 'boolean'
    if (v instanceof Integer || v instanceof Long || v instanceof BigInteger || v instanceof Short) return 'integer'
    if (v instanceof Number) return 'number'
    if (v instanceof CharSequence) return 'string'
    if (v instanceof Map) return 'object'
    if (v instanceof Collection) return 'array'
    return v.getClass().simpleName
}

boolean typeOk(Object schemaType, Object v) {
    String t = jsonType(v)
    List<String> allowed = (schemaType instanceof List ? schemaType : [schemaType]).collect { it.toString() }
    t == 'null' || t in allowed || (t == 'integer' && 'number' in allowed)
}

Path resolveScript(Path spec, String ref) {
    Path p = Paths.get(ref)
    if (p.isAbsolute()) return p.normalize()
    return (ref.startsWith('.') ? spec.parent.resolve(ref) : root.resolve(ref)).normalize()
}

/** The text inside the bracket that opens at `open` (nested brackets and quotes respected). */
String bracketed(String s, int open) {
    int depth = 0
    Character quote = null
    for (int i = open; i < s.length(); i++) {
        char ch = s.charAt(i)
        if (quote != null) { if (ch == quote && s.charAt(i - 1) != ('\\' as char)) quote = null; continue }
        if (ch == ('\'' as char) || ch == ('"' as char)) quote = ch
        else if (ch == ('[' as char)) depth++
        else if (ch == (']' as char) && --depth == 0) return s.substring(open + 1, i)
    }
    return null
}

List<String> inputProblems(String what, Map d, String inputs) {
    List<String> problems = []
    List<Integer> set = ((inputs ?: '') =~ /\binput\[(\d+)\]\s*=/).collect { it[1] as int }
    List<Integer> want = (0..<d.inputs).toList()
    if (set.toSet() != want.toSet()) {
        problems << "${what}: sets input${set.sort().unique()} but ${d.kind} ${d.name} declares ${d.inputs} input(s) (input${want})"
    }
    // A meta map given literally as input[0] = [[id: ...], ...]: every meta.KEY the process reads must be in it
    def first = (inputs ?: '') =~ /\binput\[0\]\s*=\s*\[\s*(?=\[)/
    String meta = first.find() ? bracketed(inputs, first.end()) : null
    if (d.meta && meta != null && meta =~ /\bid\s*:/) {
        List<String> missing = d.meta.findAll { !(meta =~ /\b${it}\s*:/) }
        if (missing) problems << "${what}: the meta map of input[0] lacks ${missing.join(', ')} (read by ${d.name} as meta.KEY)"
    }
    problems
}

// -- the check ---------------------------------------------------------------------------------------

Map<String, Object> fakeDirs = [baseDir: root.toString(), projectDir: root.toString(), launchDir: root.toString()]

int failures = 0
specs.each { Path spec ->
    String rel = spec.startsWith(root) ? root.relativize(spec).toString() : spec.toString()
    List<String> problems = []
    String text = Files.isRegularFile(spec) ? spec.text : null
    if (text == null) {
        failures++
        println "FAIL ${rel}"
        println "     no such file"
        return
    }
    boolean isConfig = spec.fileName.toString() == 'nf-test.config'

    // 1. Groovy syntax; 2. the DSL, recorded
    List<SpecDsl> recorded = []
    ConfigDsl cfg = null
    Script script = null
    def binding = new Binding()
    (fakeDirs + [outputDir: '/nf-test/outputDir', workDir: '/nf-test/workDir', moduleDir: spec.parent.parent.toString(),
                 moduleTestDir: spec.parent.toString()]).each { k, v -> binding.setVariable(k, v) }
    ['nextflow_process', 'nextflow_workflow', 'nextflow_pipeline', 'nextflow_function'].each { String type ->
        binding.setVariable(type, { Closure c -> def s = new SpecDsl(type: type); Dsl.eval(c, s); recorded << s })
    }
    binding.setVariable('config', { Closure c -> cfg = new ConfigDsl(); Dsl.eval(c, cfg) })
    try {
        def cc = new CompilerConfiguration()
        cc.setTolerance(0)
        script = new GroovyShell(this.class.classLoader, binding, cc).parse(text, spec.fileName.toString().replaceAll(/[^A-Za-z0-9_]/, '_'))
    } catch (CompilationFailedException e) {
        problems << ('syntax: ' + e.message.readLines().findAll { it.trim() }.take(4).join(' | '))
    }
    if (script != null) {
        try {
            script.run()
        } catch (DslError e) {
            problems << "dsl: ${e.message}"
        } catch (MissingMethodException e) {
            problems << "dsl: `${e.method}` is not an nf-test keyword here (or has the wrong arguments: ${e.arguments*.getClass()*.simpleName.join(', ')})"
        } catch (Exception e) {
            problems << "evaluation: ${e.class.simpleName}: ${e.message?.readLines()?.first()}"
        }
    }

    if (script != null && isConfig) {
        if (cfg == null) problems << 'no config { } block'
        else {
            ['testsDir', 'configFile'].each { k ->
                if (cfg.settings[k] && !Files.exists(root.resolve(cfg.settings[k] as String))) problems << "${k} not found: ${cfg.settings[k]}"
            }
            if (cfg.settings.profile) {
                String nfConfig = Files.isRegularFile(root.resolve('nextflow.config')) ? root.resolve('nextflow.config').text : ''
                def block = nfConfig =~ /(?s)\bprofiles\s*\{(.*)/
                List<String> profiles = block.find() ? (block.group(1) =~ /(?m)^\s{4}([A-Za-z0-9_]+)\s*\{/).collect { it[1] } : []
                (cfg.settings.profile as String).tokenize(',').each { p ->
                    if (!(p in profiles)) problems << "profile ${p} is not a profile of nextflow.config (${profiles.join(', ')})"
                }
            }
        }
    } else if (script != null && !problems) {
        // 3. against the pipeline
        if (recorded.size() != 1) problems << "expected one nextflow_process / nextflow_workflow / nextflow_pipeline / nextflow_function block, found ${recorded.size()}"
        recorded.each { SpecDsl s ->
            if (!s.script) { problems << 'no `script "..."` line'; return }
            Path target = resolveScript(spec, s.script)
            if (!Files.isRegularFile(target)) { problems << "script not found: ${s.script}"; return }
            Map<String, Map> defs = definitions(target, defCache)
            Map tested = null
            if (s.type in ['nextflow_process', 'nextflow_workflow']) {
                String kind = s.type == 'nextflow_process' ? 'process' : 'workflow'
                if (!s.target) problems << "no `${kind} \"NAME\"` line"
                else if (defs[s.target]?.kind != kind) problems << "${kind} ${s.target} is not defined in ${s.script}"
                else tested = defs[s.target] + [name: s.target]
            }
            if (s.type == 'nextflow_pipeline' && !(stripComments(target.text) =~ /(?m)^\s*workflow\s*\{/))
                problems << "${s.script} has no entry workflow (`workflow { ... }`)"
            if (!s.tests) problems << 'no test(...) block'

            Map<String, Map> runs = [:]   // name or alias -> definition
            (([s.setup] + s.tests*.setup).findAll()*.runs.flatten()).each { RunDsl r ->
                Path rs = r.script ? resolveScript(spec, r.script) : target
                Map<String, Map> rdefs = Files.isRegularFile(rs) ? definitions(rs, defCache) : [:]
                if (r.script && !Files.isRegularFile(rs)) problems << "setup run(\"${r.name}\"): script not found: ${r.script}"
                else if (!rdefs.containsKey(r.name)) problems << "setup run(\"${r.name}\") is not defined in ${r.script ?: s.script}"
                else {
                    Map d = rdefs[r.name] + [name: r.name]
                    runs[r.alias ?: r.name] = d
                    problems.addAll(inputProblems("setup run(\"${r.name}\")", d, r.inputs))
                }
            }

            s.tests.each { TestDsl t ->
                String where = "test(\"${t.name}\")"
                if (!t.then && !t.expect) problems << "${where}: no then { } block"
                if (tested && tested.inputs > 0 && !(t.when?.inputs)) problems << "${where}: no when { ${tested.kind} { ... } } block setting the inputs"
                if (tested && t.when?.inputs != null) problems.addAll(inputProblems(where, tested, t.when.inputs))
                (t.when?.params ?: [:]).each { k, v ->
                    if (!schemaTypes.containsKey(k)) problems << "${where}: params.${k} is not in nextflow_schema.json"
                    else if (!typeOk(schemaTypes[k], v)) problems << "${where}: params.${k} = ${v.inspect()} is ${jsonType(v)}, nextflow_schema.json says ${schemaTypes[k]}"
                }
                // RUN.out.X in the inputs: a setup run and one of its emits
                ((t.when?.inputs ?: '') + '\n' + (t.setup?.runs*.inputs ?: []).join('\n')).with { String ins ->
                    (ins =~ /\b([A-Z][A-Z0-9_]*)\.out\.([A-Za-z_][A-Za-z0-9_]*)/).each { m ->
                        if (!runs.containsKey(m[1])) problems << "${where}: ${m[1]}.out is not the output of a setup run()"
                        else if (!(m[2] in runs[m[1]].emits)) problems << "${where}: ${m[1]}.out.${m[2]}: ${m[1]} emits ${runs[m[1]].emits.join(', ')}"
                    }
                }
            }
            if (tested) {
                String outVar = tested.kind == 'process' ? 'process' : 'workflow'
                (text =~ /\b${outVar}\.out\.([A-Za-z_][A-Za-z0-9_]*)/).collect { it[1] }.unique().each { e ->
                    if (!(e in tested.emits)) problems << "${outVar}.out.${e}: ${tested.name} emits ${tested.emits.join(', ') ?: 'nothing by name'}"
                }
            }
        }
        // Process names compared in assertions must exist somewhere in the pipeline
        (text =~ /(?:contains|startsWith|endsWith|equals)\(\s*['"]([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)['"]\s*\)|==\s*['"]([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)['"]/).each { m ->
            String n = m[1] ?: m[2]
            if (!pipelineDefs.containsKey(n)) problems << "${n} is not a process or workflow of the pipeline"
        }
    }
    // Paths under the repository
    (text =~ /\$\{?(?:baseDir|projectDir)\}?\/([A-Za-z0-9_.\/-]+)/).collect { it[1] }.unique().each { p ->
        if (!Files.exists(root.resolve(p))) problems << "no such path in the repository: ${p}"
    }

    problems = problems.unique()
    if (problems) {
        failures++
        println "FAIL ${rel}"
        problems.each { println "     ${it}" }
    } else {
        println "ok   ${rel}"
    }
}

println "${specs.size() - failures}/${specs.size()} nf-test files pass"
System.exit(failures ? 1 : 0)
